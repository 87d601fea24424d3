"""Acoustic fingerprints (Chromaprint) and the rule that says two fingerprints are one recording.

A song's fingerprint is Chromaprint's raw fingerprint (algorithm TEST2, the
default of ``fpcalc`` and AcoustID) of the first ``FINGERPRINT_SECONDS``
(120 s, also ``fpcalc``'s and AcoustID's default) of its decoded signal: one uint32
per 1365 samples at 11025 Hz (about 8.08 items per second), each bit the
quantised output of one of Chromaprint's classifiers over a chroma image.
It is computed by Debian's ``libchromaprint1`` through pyacoustid's ctypes
binding (``import chromaprint``), fed with the mono samples that
``extract`` already decoded, resampled to 11025 Hz with soxr's quick
quality (Chromaprint's own resampler costs about 5x more) and rounded to
16-bit PCM: about 19 ms of CPU per song (fingerprinting whole songs cost 32 ms
per 3 minutes, 52 ms for a 288 s song). The 120 s prefix keeps the grouping
rule below: two files of one recording share their start up to a trim, so
their prefixes overlap just as the whole songs did (a trim of up to 60 s
still leaves half of the shorter fingerprint overlapping); a prefix also
matches a whole-song fingerprint stored by earlier versions (tests/datasets/test_groups.py).

Matching (:func:`match_fingerprints`) tolerates another encoder, bitrate or
sample rate (bits flip) and a trimmed or padded start (the sequences are
offset), following the rule of :class:`MatchRule`:

1. **Candidate offsets.** Each item's top ``key_bits`` bits are its key;
   keys occurring more than ``max_key_repeats`` times in either fingerprint
   (silence, held chords) are ignored. Every pair of equal keys votes for
   the offset ``i - j`` (item ``i`` of ``a`` against item ``j`` of ``b``);
   the ``n_offsets`` most voted offsets and their neighbours (+-1) are tried.
2. **Overlap.** At offset ``d`` item ``a[i]`` meets ``b[i - d]``; the
   overlap is the items where both exist. It must last at least
   ``min_overlap_s`` seconds and cover at least ``min_overlap_fraction`` of
   the shorter fingerprint.
3. **Agreement.** An overlapping pair of items agrees when they differ in at
   most ``max_item_bits`` of their 32 bits (a bit error rate <= 25 %). The
   fingerprints match when, at the best offset (most agreeing items, then
   fewest bit errors), at least ``min_match_share`` of the overlapping items agree.

Measured on Debian's fretsonfire songs: a song against itself re-encoded
(32 kHz, Ogg Vorbis ~54 kbit/s, first 2 s cut) agrees on 99.9 % of its
items at offset +16 (2 s); different songs agree on at most 4 % at their
best offset; a song's guitar stem against its full mix on 12 %.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mapkit.settings import Settings

#: Chromaprint analyses audio at this rate; feeding it this rate skips its own (slower) resampler.
CHROMAPRINT_RATE = 11025
#: Samples between fingerprint items at CHROMAPRINT_RATE (frame 4096, overlap 4096 - 4096 // 3).
CHROMAPRINT_HOP = 1365
#: Fingerprint items per second.
ITEMS_PER_SECOND = CHROMAPRINT_RATE / CHROMAPRINT_HOP
#: soxr quality of the resampling to CHROMAPRINT_RATE: "QQ" (quick) costs 9 ms per 3 minutes instead of
#: 20 ms for "HQ", and matching is unchanged (Chromaprint's chroma spans 28 Hz - 3.5 kHz): measured on 5
#: real songs re-encoded at 22.05 kHz (Vorbis q 0), worst agreement 99.8 % (HQ 99.9 %); different
#: songs at most 4.9 % (HQ 4.7 %).
RESAMPLE_QUALITY = "QQ"
#: Seconds of audio fingerprinted, from the start (fpcalc's and AcoustID's default length).
FINGERPRINT_SECONDS = 120
#: pyacoustid's Fingerprinter.ALGORITHM_TEST2 (the default).
ALGORITHM = 1
#: What to install when the library is missing.
INSTALL_HINT = ("install Debian's libchromaprint1 (apt-get install libchromaprint1, as scripts/setup.sh does) "
                "and pyacoustid")


@functools.lru_cache(maxsize=1)
def chromaprint_problem() -> str | None:
    """Why fingerprints cannot be computed here (library or binding missing), or None when they can."""
    try:
        import chromaprint  # noqa: F401 - pyacoustid's binding; raises ImportError without the C library
    except ImportError as e:
        return f"acoustic fingerprints unavailable ({e}): {INSTALL_HINT}"
    except OSError as e:  # a broken library file
        return f"acoustic fingerprints unavailable (libchromaprint: {e}): {INSTALL_HINT}"
    return None


def chromaprint_version() -> str:
    """The version of the loaded libchromaprint ("" when unavailable)."""
    if chromaprint_problem():
        return ""
    import chromaprint

    return chromaprint._libchromaprint.chromaprint_get_version().decode("ascii", "replace")


def fingerprint(y: np.ndarray, sr: int, seconds: float | None = FINGERPRINT_SECONDS) -> np.ndarray:
    """Chromaprint's raw fingerprint of the start of a mono signal.

    Parameters
    ----------
    y : np.ndarray [shape=(n,), dtype=float32]
        Mono samples in [-1, 1] (as decoded by :func:`~mapkit.preprocess.audio.decode_audio`).
    sr : int
        Their sample rate.
    seconds : float or None
        Only ``y[:round(seconds * sr)]`` is fingerprinted (default
        ``FINGERPRINT_SECONDS``); None: the whole signal.

    Returns
    -------
    np.ndarray [shape=(m,), dtype=uint32]
        About ``ITEMS_PER_SECOND`` items per second of the fingerprinted
        audio; empty for audio shorter than Chromaprint's first item (about 3 s).

    Raises
    ------
    RuntimeError
        Chromaprint is not available (:func:`chromaprint_problem` says why)
        or failed on this signal.
    """
    problem = chromaprint_problem()
    if problem:
        raise RuntimeError(problem)
    import chromaprint

    from mapkit.preprocess.audio import resample

    if seconds is not None:
        y = y[: int(round(seconds * sr))]
    y11 = resample(y, sr, CHROMAPRINT_RATE, RESAMPLE_QUALITY)
    pcm = np.clip(np.rint(y11 * 32767.0), -32768, 32767).astype("<i2")
    fp = chromaprint.Fingerprinter(ALGORITHM)
    try:
        fp.start(CHROMAPRINT_RATE, 1)
        fp.feed(pcm.tobytes())
        encoded = fp.finish()
    except chromaprint.FingerprintError:
        raise RuntimeError("chromaprint failed on this audio") from None
    if not encoded:
        return np.zeros(0, dtype=np.uint32)
    raw, _algorithm = chromaprint.decode_fingerprint(encoded)
    return np.asarray(raw, dtype=np.uint32)


@dataclass(frozen=True)
class MatchRule(Settings):
    """When two fingerprints are the same recording (see the module docstring for the rule)."""

    KIND = "fingerprint-match"

    key_bits: int = 20
    max_key_repeats: int = 4
    n_offsets: int = 3
    max_item_bits: int = 8
    min_match_share: float = 0.6
    min_overlap_s: float = 10.0
    min_overlap_fraction: float = 0.5


@dataclass(frozen=True)
class FingerprintMatch:
    """The best alignment found: ``a[i]`` meets ``b[i - offset]`` over ``overlap`` items, ``share`` of them agree."""

    offset: int
    overlap: int
    share: float
    bit_error_rate: float
    matched: bool

    @property
    def offset_s(self) -> float:
        """The offset in seconds (positive: ``b`` lacks the first ``offset_s`` seconds of ``a``)."""
        return self.offset / ITEMS_PER_SECOND


def _keys(fp: np.ndarray, rule: MatchRule):
    """(distinct usable keys, positions of each) of a fingerprint: keys repeated too often are dropped."""
    keys = (np.asarray(fp, dtype=np.uint32) >> np.uint32(32 - rule.key_bits)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    uniq, start, count = np.unique(sk, return_index=True, return_counts=True)
    keep = count <= rule.max_key_repeats
    return uniq[keep], start[keep], count[keep], order


def candidate_offsets(a: np.ndarray, b: np.ndarray, rule: MatchRule = MatchRule()) -> list[int]:
    """The ``rule.n_offsets`` offsets most voted for by equal keys (most votes first), each a candidate ``d``."""
    ua, sa, ca, oa = _keys(a, rule)
    ub, sb, cb, ob = _keys(b, rule)
    common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    if not len(common):
        return []
    votes = []
    for k in range(int(ca.max(initial=1))):  # at most max_key_repeats x max_key_repeats pairs per key
        for m in range(int(cb.max(initial=1))):
            ok = (ca[ia] > k) & (cb[ib] > m)
            if ok.any():
                votes.append(oa[sa[ia[ok]] + k] - ob[sb[ib[ok]] + m])
    offsets, counts = np.unique(np.concatenate(votes), return_counts=True)
    best = np.argsort(-counts, kind="stable")[: rule.n_offsets]
    return [int(offsets[i]) for i in best]


def agreement(a: np.ndarray, b: np.ndarray, offset: int, rule: MatchRule = MatchRule()):
    """``(overlap items, share of agreeing items, bit error rate)`` with ``a[i]`` against ``b[i - offset]``."""
    i0, i1 = max(0, offset), min(len(a), len(b) + offset)
    if i1 <= i0:
        return 0, 0.0, 0.5
    bits = np.bitwise_count(np.asarray(a[i0:i1], np.uint32) ^ np.asarray(b[i0 - offset:i1 - offset], np.uint32))
    return i1 - i0, float((bits <= rule.max_item_bits).mean()), float(bits.mean() / 32.0)


def match_fingerprints(a: np.ndarray, b: np.ndarray, rule: MatchRule = MatchRule()) -> FingerprintMatch | None:
    """The best alignment of two fingerprints and whether it makes them one recording (the rule above).

    Returns
    -------
    FingerprintMatch or None
        None when no offset is voted for (no equal keys: certainly different).
    """
    best = None
    for d0 in candidate_offsets(a, b, rule):
        for d in (d0 - 1, d0, d0 + 1):
            overlap, share, ber = agreement(a, b, d, rule)
            if best is None or (share, -ber) > (best[2], -best[3]):  # ties: fewer bit errors
                best = (d, overlap, share, ber)
    if best is None:
        return None
    d, overlap, share, ber = best
    shorter = min(len(a), len(b))
    long_enough = (overlap >= rule.min_overlap_s * ITEMS_PER_SECOND
                   and overlap >= rule.min_overlap_fraction * shorter)
    return FingerprintMatch(d, overlap, share, ber, bool(long_enough and share >= rule.min_match_share))
