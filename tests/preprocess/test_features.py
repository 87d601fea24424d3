import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import mapkit.preprocess.features as features
from mapkit.errors import AudioError
from mapkit.preprocess.audio import resample
from mapkit.preprocess.features import (
    band_sums,
    hann_window,
    log_mel,
    mel_bands,
    mel_filters,
    placement_features,
    selection_features,
    song_features,
)
from mapkit.preprocess.sources import Source
from mapkit.preprocess.timebase import n_frames
from mapkit.settings import FeatureSettings

SETTINGS = FeatureSettings()
SILENCE = SETTINGS.silence_value
REAL_SONG = Path("/usr/share/games/fretsonfire/data/songs/sectoid/Metal madness/song.ogg")
#: Bound enforced on |mapkit - librosa| in log units (float32, before float16 storage).
#: Measured on the real excerpt: 0.0025 (1024), 0.0043 (2048), 0.0064 (4096), 2.4e-5 (16 kHz).
LOG_TOLERANCE = 0.02


def music_like(seconds, sr, seed=0):
    """Generated stand-in for music: chords with decaying notes, noise drum hits, a quiet intro."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    y = np.zeros(n)
    for onset in np.arange(0.5, seconds, 0.25):
        env = np.where(t >= onset, np.exp(-(t - onset) * 6), 0.0)
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        y += env * sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 5))
        if rng.random() < 0.5:
            hit = (t >= onset) & (t < onset + 0.05)
            y[hit] += rng.normal(0, 0.5, hit.sum())
    y[: int(0.3 * sr)] *= 1e-4  # quiet intro exercises the log at small powers
    return (0.2 * y / np.max(np.abs(y))).astype(np.float32)


def real_music_excerpt(seconds=25.0, offset=30.0):
    """(y, sr, name): an excerpt of a real song when installed, else generated music-like audio."""
    if REAL_SONG.parent.parent.is_dir():
        with sf.SoundFile(str(REAL_SONG)) as f:
            f.seek(int(offset * f.samplerate))
            data = f.read(int(seconds * f.samplerate), dtype="float32", always_2d=True)
            return data.mean(axis=1).astype(np.float32), f.samplerate, "real"
    return music_like(seconds, 44100), 44100, "generated"


def librosa_log_mel(y, sr, n_fft, hop, n_mels):
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    return np.log(mel + 1e-10).T


@pytest.mark.parametrize("sr, n_fft, n_mels", [(44100, 1024, 80), (44100, 4096, 80), (16000, 2048, 100), (22050, 512, 40)])
def test_mel_filters_equal_librosa(sr, n_fft, n_mels):
    import librosa

    np.testing.assert_array_equal(mel_filters(sr, n_fft, n_mels), librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels))


def test_hann_window_is_periodic_hann():
    import scipy.signal

    np.testing.assert_allclose(hann_window(2048), scipy.signal.get_window("hann", 2048), atol=1e-7)


def test_log_mel_equals_librosa_on_music():
    """Same resampled signal into both, so this compares STFT + mel code only."""
    y, sr, _kind = real_music_excerpt()
    worst = {}
    for stage_sr, n_fft, hop, n_mels in [(44100, 1024, 441, 80), (44100, 2048, 441, 80), (44100, 4096, 441, 80),
                                         (16000, 2048, 160, 100)]:
        ys = resample(y, sr, stage_sr)
        T = 1 + len(ys) // hop
        ours = log_mel(ys, stage_sr, n_fft, hop, n_mels, T)
        ref = librosa_log_mel(ys, stage_sr, n_fft, hop, n_mels)
        assert ours.shape == ref.shape == (T, n_mels)
        worst[(stage_sr, n_fft)] = float(np.max(np.abs(ours - ref)))
    assert max(worst.values()) < LOG_TOLERANCE, worst


def test_log_mel_grid_extends_and_crops_like_a_longer_centred_stft():
    y = music_like(2.0, 16000, seed=3)[:31_999]  # not a whole number of hops
    hop, n_fft = 160, 2048
    stft_frames = 1 + len(y) // hop
    ref = librosa_log_mel(np.pad(y, (0, 5 * hop)), 16000, n_fft, hop, 100)
    more = log_mel(y, 16000, n_fft, hop, 100, stft_frames + 3)
    np.testing.assert_allclose(more, ref[: stft_frames + 3], atol=LOG_TOLERANCE)
    fewer = log_mel(y, 16000, n_fft, hop, 100, stft_frames - 2)
    np.testing.assert_array_equal(fewer, more[: stft_frames - 2])


@pytest.mark.parametrize("sr, n_fft, n_mels", [(44100, 1024, 80), (44100, 4096, 80), (16000, 2048, 100)])
def test_mel_bands_cover_every_filter_and_its_nonzero_bins(sr, n_fft, n_mels):
    weights = mel_filters(sr, n_fft, n_mels)
    groups = mel_bands(weights)
    assert 1 < len(groups) < n_mels  # grouped, not one dense product nor one product per filter
    assert [g[0] for g in groups] == [0] + [g[1] for g in groups[:-1]] and groups[-1][1] == n_mels
    banded = np.zeros_like(weights)
    for m0, m1, b0, b1 in groups:
        banded[m0:m1, b0:b1] = weights[m0:m1, b0:b1]
    np.testing.assert_array_equal(banded, weights)  # nothing outside a group's bins is dropped
    # and the banded products over interleaved squares give the plain mel projection
    rng = np.random.default_rng(0)
    spec = (rng.normal(size=(5, n_fft // 2 + 1)) + 1j * rng.normal(size=(5, n_fft // 2 + 1))).astype(np.complex64)
    sq = np.square(spec.view(np.float32))
    mel = np.empty((5, n_mels), dtype=np.float32)
    for m0, m1, c0, c1, w in features._mel_products(sr, n_fft, n_mels):
        np.matmul(sq[:, c0:c1], w, out=mel[:, m0:m1])
    np.testing.assert_allclose(mel, (np.abs(spec) ** 2) @ weights.T, rtol=2e-5)


def test_log_mel_does_not_depend_on_block_size(monkeypatch):
    y = music_like(1.5, 44100, seed=1)
    T = n_frames(len(y), 44100)
    whole = log_mel(y, 44100, 1024, 441, 80, T)
    monkeypatch.setattr(features, "BLOCK_BYTES", 7 * 1024 * 4)  # 7 frames a block: edge blocks and a ragged last one
    # BLAS rounds a product row by row differently for other block heights (float32, ~1e-7 relative):
    # equal within rounding, far below any error of the edge logic (a wrong frame is off by >> 1e-3)
    np.testing.assert_allclose(log_mel(y, 44100, 1024, 441, 80, T), whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_rows_are_T_plus_pads_at_boundary_lengths(tmp_path, sr, channels):
    # n*100 divisible by sr (exactly on a frame boundary) and one sample either side
    on_boundary = sr * 2 if sr != 22050 else 441 * 101
    for n in (on_boundary - 1, on_boundary, on_boundary + 1):
        assert (n * 100 % sr == 0) == (n == on_boundary)
        left = music_like(n / sr + 0.01, sr)[:n]
        data = left if channels == 1 else np.stack([left, -0.5 * left], axis=1)
        path = tmp_path / f"s{n}.wav"
        sf.write(str(path), data, sr, subtype="FLOAT")
        song = song_features(Source(f"s{n}", str(path), "audio"))
        T = n_frames(n, sr)
        assert song.n_frames == T and song.n_samples == n and song.sample_rate == sr
        assert song.placement.shape == (T + 14, 3, 80)
        assert song.selection.shape == (T + 2, 100)
        assert song.band_sums["placement"]["count"] == song.band_sums["selection"]["count"] == T


def test_padding_rows_hold_the_silence_value_never_zero():
    y = music_like(1.0, 44100)
    place = placement_features(y, 44100)
    sel = selection_features(y, 44100)
    assert SILENCE == pytest.approx(np.log(1e-10))
    assert np.all(place[:7] == np.float32(SILENCE)) and np.all(place[-7:] == np.float32(SILENCE))
    assert np.all(sel[:1] == np.float32(SILENCE)) and np.all(sel[-1:] == np.float32(SILENCE))
    np.testing.assert_array_equal(placement_features(y, 44100, pad=False), place[7:-7])
    np.testing.assert_array_equal(selection_features(y, 44100, pad=False), sel[1:-1])


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
def test_click_lands_on_its_frame_after_resampling(sr):
    # a click at 1.23 s is frame 123 in both stages: row 123 + pad
    y = np.full(2 * sr, 1e-4, dtype=np.float32)
    y[round(1.23 * sr)] = 1.0
    place = placement_features(y, sr)
    sel = selection_features(y, sr)
    assert int(np.argmax(place[:, 0, :].sum(axis=1))) == 123 + 7
    assert int(np.argmax(sel.sum(axis=1))) == 123 + 1


def test_one_sample_song_has_one_frame(tmp_path):
    path = tmp_path / "one.wav"
    sf.write(str(path), np.array([0.5], dtype=np.float32), 44100, subtype="FLOAT")
    song = song_features(Source("one", str(path), "audio"))
    assert song.n_frames == 1 and song.n_samples == 1
    assert song.placement.shape == (15, 3, 80) and song.selection.shape == (3, 100)
    assert np.isfinite(song.placement.astype(np.float32)).all()


def test_song_features_of_a_zipped_level(tmp_path):
    sr = 48000
    y = music_like(3.0, sr, seed=5)
    audio = tmp_path / "song.egg"
    sf.write(str(audio), np.stack([y, y], axis=1), sr, format="OGG", subtype="VORBIS")
    zpath = tmp_path / "My Level.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("Info.dat", json.dumps({"_version": "2.0.0", "_songFilename": "song.egg"}))
        z.write(audio, "song.egg")
    song = song_features(Source("My Level", str(zpath), "level"))
    assert song.song_id == "My Level"
    assert song.source.endswith("song.egg") and str(zpath) in song.source
    assert song.audio_sha256 == hashlib.sha256(audio.read_bytes()).hexdigest()
    assert song.placement.dtype == song.selection.dtype == np.float16
    T = n_frames(song.n_samples, sr)
    assert song.n_frames == T and song.duration_s == pytest.approx(song.n_samples / sr)
    assert tuple(song.pad_placement) == (7, 7) and tuple(song.pad_selection) == (1, 1)
    # band sums over the unpadded frames, float64, consistent with the stored values
    for stage, arr, p in (("placement", song.placement, 7), ("selection", song.selection, 1)):
        sums = song.band_sums[stage]
        assert sums["sum"].dtype == sums["sum_sq"].dtype == np.float64
        assert sums["sum"].shape == arr.shape[1:] and sums["count"] == T
        body = arr[p : p + T].astype(np.float64)
        np.testing.assert_allclose(sums["sum"] / T, body.mean(axis=0), atol=0.02)
        np.testing.assert_allclose(sums["sum_sq"] / T, (body**2).mean(axis=0), rtol=2e-3)


def test_band_sums_of_known_values():
    x = np.array([[1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    s = band_sums(x)
    assert s["sum"].tolist() == [4.0, -2.0] and s["sum_sq"].tolist() == [10.0, 20.0] and s["count"] == 2


def test_song_features_errors_are_audio_errors(tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(4410, dtype=np.float32), 44100)
    with pytest.raises(AudioError, match="silent"):
        song_features(Source("silent", str(silent), "audio"))
    level = tmp_path / "lvl"
    level.mkdir()
    (level / "Info.dat").write_text(json.dumps({"_songFilename": "gone.egg"}))
    with pytest.raises(AudioError) as e:
        song_features(Source("lvl", str(level), "level"))
    assert "gone.egg" in e.value.path and "missing" in e.value.reason


def test_feature_path_does_not_import_librosa(tmp_path):
    # every worker process and `mapkit generate` would pay ~1.3 s of librosa imports
    import subprocess
    import sys

    path = tmp_path / "a.wav"
    sf.write(str(path), music_like(1.0, 22050), 22050)
    code = ("import sys; from mapkit.preprocess.features import song_features; "
            "from mapkit.preprocess.sources import Source; "
            f"song_features(Source('a', {str(path)!r}, 'audio')); print('librosa' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_store_values_are_the_float32_values_rounded_and_their_sums():
    # what song_features stores: float16 rounded block by block, band sums of the float32 values on the way
    y = music_like(3.0, 48000, seed=5)
    T = n_frames(len(y), 48000)
    for stage, pad in ((placement_features, 7), (selection_features, 1)):
        sums = {}
        stored = stage(y, 48000, dtype=np.float16, sums=sums)
        exact = stage(y, 48000)
        assert stored.dtype == np.float16 and exact.dtype == np.float32
        np.testing.assert_array_equal(stored, exact.astype(np.float16))
        want = band_sums(exact[pad: pad + T])
        assert sums["count"] == want["count"] == T
        np.testing.assert_allclose(sums["sum"], want["sum"], rtol=1e-5)
        np.testing.assert_allclose(sums["sum_sq"], want["sum_sq"], rtol=1e-5)


@pytest.mark.skipif(not REAL_SONG.exists(), reason="Debian fretsonfire songs not installed")
def test_features_end_to_end_equal_librosa_load_and_librosa_on_real_music(tmp_path):
    # our decoder (FFmpeg's Vorbis) and features against librosa.load (libsndfile/libvorbis) and librosa's
    import librosa

    from mapkit.writers.ogg import encode_ogg_vorbis

    with sf.SoundFile(str(REAL_SONG)) as f:
        f.seek(60 * f.samplerate)
        excerpt = f.read(10 * f.samplerate, dtype="float32", always_2d=True)
    path = tmp_path / "song.ogg"
    path.write_bytes(encode_ogg_vorbis(excerpt, 44100, serial=1))
    song = song_features(Source("excerpt", str(path), "audio"))
    y, sr = librosa.load(str(path), sr=44100)
    T = song.n_frames
    assert len(y) == song.n_samples and T == 1 + len(y) // 441
    for i, n_fft in enumerate((1024, 2048, 4096)):
        ref = librosa_log_mel(y, 44100, n_fft, 441, 80)
        diff = np.abs(song.placement[7: 7 + T, i].astype(np.float32) - ref[:T])
        assert diff.max() < LOG_TOLERANCE + 0.008, (n_fft, diff.max())  # + float16 storage's rounding
    ref = librosa_log_mel(librosa.resample(y, orig_sr=44100, target_sr=16000), 16000, 2048, 160, 100)
    n = min(T, len(ref))
    assert np.abs(song.selection[1: 1 + n].astype(np.float32) - ref[:n]).max() < LOG_TOLERANCE + 0.008
