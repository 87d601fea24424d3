import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mapkit.errors import AudioError
from mapkit.preprocess.audio import (AudioNote, _decode_vorbis, audio_sha256, decode_audio, ogg_page_crc,
                                    ogg_stream_state, open_source_audio, resample, vorbis_length)
from mapkit.preprocess.features import song_features
from mapkit.preprocess.sources import Source
from mapkit.writers.ogg import encode_ogg_vorbis

REAL_SONG = Path("/usr/share/games/fretsonfire/data/songs/sectoid/Metal madness/song.ogg")


def tone(n, sr, freq=440.0, amp=0.3):
    t = np.arange(n) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data, sr, fmt="WAV", subtype="FLOAT"):
    sf.write(str(path), data, sr, format=fmt, subtype=subtype)
    return path


def encoded(data, sr, fmt, subtype) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("sr", [22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_mono_is_mean_of_channels(tmp_path, sr, channels):
    left = tone(sr // 2 + 7, sr, 440)
    right = tone(sr // 2 + 7, sr, 660, amp=0.5)
    data = left if channels == 1 else np.stack([left, right], axis=1)
    path = write(tmp_path / "a.wav", data, sr)
    y, got_sr = decode_audio(path)
    assert got_sr == sr and y.dtype == np.float32 and y.shape == (len(left),)
    expected = left if channels == 1 else (left + right) * np.float32(0.5)
    np.testing.assert_array_equal(y, expected)


def test_decode_three_channels_and_file_object_and_blocks(tmp_path, monkeypatch):
    import mapkit.preprocess.audio as audio

    monkeypatch.setattr(audio, "DECODE_BLOCK", 1000)  # many blocks, last one partial
    sr = 16000
    chans = np.stack([tone(4321, sr, f) for f in (200, 300, 500)], axis=1)
    path = write(tmp_path / "c.wav", chans, sr)
    with open(path, "rb") as f:
        y, _ = decode_audio(f)
    np.testing.assert_allclose(y, chans.sum(axis=1) / 3, atol=1e-7)


def test_decode_ogg_vorbis_stereo(tmp_path):
    sr = 44100
    data = np.stack([tone(sr, sr), tone(sr, sr, 880)], axis=1)
    path = write(tmp_path / "song.egg", data, sr, "OGG", "VORBIS")
    y, got_sr = decode_audio(path)
    assert got_sr == sr and len(y) == sr
    # lossy codec: close to the mean of the channels, not equal
    assert np.sqrt(np.mean((y - data.mean(axis=1)) ** 2)) < 0.01


def test_one_sample_file_is_legal(tmp_path):
    path = write(tmp_path / "one.wav", np.array([0.5], dtype=np.float32), 44100)
    y, sr = decode_audio(path)
    assert y.tolist() == [0.5] and sr == 44100


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"this is not audio" * 50, "not a readable audio file"),
        (b"RIFF\x00\x00\x00\x00WAVE", "not a readable audio file"),
    ],
)
def test_unreadable_files_name_file_and_reason(tmp_path, payload, reason):
    path = tmp_path / "bad.ogg"
    path.write_bytes(payload)
    with pytest.raises(AudioError) as e:
        decode_audio(path)
    assert e.value.path == str(path)
    assert e.value.reason.startswith(reason)


def test_error_uses_given_name_for_file_objects():
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(b""), name="level.zip!song.egg")
    assert e.value.path == "level.zip!song.egg"


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("OGG", "VORBIS"), ("FLAC", "PCM_16")])
def test_truncated_files_are_rejected(fmt, subtype):
    sr = 44100
    data = encoded(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, fmt, subtype)
    y, _ = decode_audio(io.BytesIO(data))  # the whole file is fine
    assert len(y) == 3 * sr
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(data[: int(len(data) * 0.7)]), name="cut")
    assert e.value.reason.startswith("truncated"), e.value.reason


def ogg_pages(data: bytes) -> list[int]:
    """Byte offsets of the pages of a whole Ogg file."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        n_seg = data[pos + 26]
        pos += 27 + n_seg + sum(data[pos + 27:pos + 27 + n_seg])
    return starts


def without_eos_flag(data: bytes) -> bytes:
    """``data`` with the end-of-stream flag of its last page cleared and that page's CRC redone."""
    last = ogg_pages(data)[-1]
    assert data[last + 5] & 4  # the writer set it
    page = bytearray(data[last:])
    page[5] &= ~4
    page[22:26] = b"\0\0\0\0"
    page[22:26] = ogg_page_crc(bytes(page)).to_bytes(4, "little")
    return data[:last] + bytes(page)


def test_ogg_without_end_of_stream_flag_that_decodes_fully_is_accepted_and_noted(tmp_path):
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    no_eos = without_eos_flag(whole)
    assert ogg_stream_state(whole) == (None, None)
    problem, note = ogg_stream_state(no_eos)
    assert problem is None and "end-of-stream flag" in note
    expected, _ = decode_audio(io.BytesIO(whole))
    with pytest.warns(AudioNote, match="level.zip!song.egg: Ogg stream ends without its end-of-stream flag"):
        y, got_sr = decode_audio(io.BytesIO(no_eos), name="level.zip!song.egg")
    assert got_sr == sr and len(y) == 3 * sr
    np.testing.assert_array_equal(y, expected)  # same samples: only the flag differs
    # the note reaches the song's record (mapkit extract puts it in the report line)
    (tmp_path / "no-eos.ogg").write_bytes(no_eos)
    song = song_features(Source("no-eos", str(tmp_path / "no-eos.ogg"), "audio"))
    assert song.n_samples == 3 * sr and len(song.notes) == 1 and "end-of-stream flag" in song.notes[0]
    (tmp_path / "whole.ogg").write_bytes(whole)
    assert song_features(Source("whole", str(tmp_path / "whole.ogg"), "audio")).notes == ()


def test_ogg_cut_inside_a_page_is_truncated_with_or_without_flag():
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    pages = ogg_pages(whole)
    assert len(pages) > 4
    for cut in (pages[-1] + 10, pages[-2] + 30, pages[len(pages) // 2] + 3, len(whole) - 1):
        for data in (whole[:cut], without_eos_flag(whole)[:cut]):
            with pytest.raises(AudioError) as e:
                decode_audio(io.BytesIO(data), name="cut")
            assert e.value.reason.startswith("truncated"), e.value.reason


def test_ogg_page_failing_its_checksum_is_corrupt():
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    middle = ogg_pages(whole)[3]
    flipped = bytearray(whole)
    flipped[middle + 100] ^= 0x10  # one bit of audio data; the page keeps its old CRC
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(bytes(flipped)), name="flipped")
    assert e.value.reason == f"corrupt: the Ogg page at byte {middle} fails its checksum (its samples would be lost)"


@pytest.mark.skipif(not REAL_SONG.exists(), reason="Debian fretsonfire songs not installed")
def test_vorbis_decoder_matches_libvorbis_on_real_music():
    data = REAL_SONG.read_bytes()
    y, sr = decode_audio(io.BytesIO(data))
    ref, ref_sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert sr == ref_sr and len(y) == len(ref)
    assert np.max(np.abs(y - ref.mean(axis=1, dtype=np.float32))) < 5e-7


def resealed(data: bytes, page: int, change) -> bytes:
    """``data`` with ``change(bytearray of the page at byte `page`)`` applied and that page's CRC redone."""
    pages = ogg_pages(data) + [len(data)]
    end = pages[pages.index(page) + 1]
    buf = bytearray(data[page:end])
    change(buf)
    buf[22:26] = b"\0\0\0\0"
    buf[22:26] = ogg_page_crc(bytes(buf)).to_bytes(4, "little")
    return data[:page] + bytes(buf) + data[end:]


def with_granule(data: bytes, granule: int) -> bytes:
    """``data`` whose last page declares ``granule`` samples (CRC redone, so only the length lies)."""
    return resealed(data, ogg_pages(data)[-1], lambda buf: buf.__setitem__(slice(6, 14), granule.to_bytes(8, "little")))


@pytest.mark.skipif(not REAL_SONG.exists(), reason="Debian fretsonfire songs not installed")
def test_ffmpeg_decodes_real_music_itself_in_blocks_of_any_size(monkeypatch):
    import mapkit.preprocess.audio as audio

    data = REAL_SONG.read_bytes()
    decoded = _decode_vorbis(data, "song.ogg")  # FFmpeg's decoder, not the libsndfile fallback
    assert decoded is not None
    y, n, declared, sr = decoded
    assert n == declared == len(y) == vorbis_length(data)[0] and sr == 44100
    monkeypatch.setattr(audio, "FIFO_BLOCK", 1000)  # many FIFO blocks, the last one partial
    small, *_ = _decode_vorbis(data, "song.ogg")
    np.testing.assert_array_equal(small, y)


@pytest.mark.parametrize("channels, sr", [(1, 22050), (2, 48000), (3, 44100)])
def test_ffmpeg_mono_is_the_mean_of_any_number_of_channels(channels, sr):
    data = np.stack([tone(3 * sr, sr, 220 * (c + 1), amp=0.2) for c in range(channels)], axis=1)
    ogg = encoded(data, sr, "OGG", "VORBIS")
    decoded = _decode_vorbis(ogg, "song.egg")
    assert decoded is not None  # FFmpeg's decoder, not the fallback
    y, n, declared, got_sr = decoded
    ref, _ = sf.read(io.BytesIO(ogg), dtype="float32", always_2d=True)
    assert got_sr == sr and n == declared == len(ref) == 3 * sr and ref.shape[1] == channels
    assert np.max(np.abs(y - ref.sum(axis=1, dtype=np.float32) / np.float32(channels))) < 1e-6


@pytest.mark.parametrize("n", [5, 700, 4096, 44100])
def test_short_vorbis_streams_decode_to_their_declared_length(n):
    # FFmpeg trims a stream whose audio fits in its first page wrongly (4096 -> 3968 samples): libsndfile decodes those
    sr = 44100
    data = encoded(np.stack([tone(n, sr), tone(n, sr, 550)], axis=1), sr, "OGG", "VORBIS")
    y, _ = decode_audio(io.BytesIO(data))
    ref, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert len(y) == len(ref) == n
    assert np.max(np.abs(y - ref.mean(axis=1, dtype=np.float32))) < 5e-7


def test_vorbis_declaring_more_samples_than_it_holds():
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    declared, capacity = vorbis_length(whole)
    assert declared == 3 * sr and declared < capacity < 100 * declared
    # more than its packets can hold (e.g. 2**40: a terabyte buffer): refused before any buffer is made
    for lie in (capacity + 1, 1 << 40):
        with pytest.raises(AudioError) as e:
            decode_audio(io.BytesIO(with_granule(whole, lie)), name="lie.egg")
        assert e.value.path == "lie.egg"
        assert e.value.reason == f"corrupt: the last Ogg page declares {lie} samples, more than its packets can hold ({capacity})"
    # a smaller lie: the samples the header promises are missing
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(with_granule(whole, (declared + capacity) // 2)), name="lie.egg")
    assert e.value.reason.startswith("truncated"), e.value.reason


def scramble_body(buf: bytearray, seed: int) -> None:
    """Random bytes over 400 bytes of an Ogg page's body (after its segment table: the page keeps its length)."""
    body = 27 + buf[26]
    buf[body + 20: body + 420] = np.random.default_rng(seed).bytes(400)


def test_vorbis_with_damaged_audio_under_a_valid_checksum_fails_cleanly_or_decodes_fully(capfd):
    # the page's CRC is redone, so only the decoders can notice: FFmpeg's complaint sends the file to libsndfile,
    # which decodes it or names the file; samples it skips count against the last page's granule position;
    # nothing is printed by FFmpeg, nothing hangs
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    pages = ogg_pages(whole)
    outcomes = set()
    for seed, page in enumerate(pages[2:-1]):
        damaged = resealed(whole, page, lambda buf: scramble_body(buf, seed))
        assert ogg_stream_state(damaged) == (None, None)
        try:
            y, _ = decode_audio(io.BytesIO(damaged), name="damaged.egg")
            assert len(y) == 3 * sr and np.isfinite(y).all()
            outcomes.add("decoded")
        except AudioError as e:
            assert e.path == "damaged.egg" and e.reason
            outcomes.add(e.reason.split(":")[0])
    assert outcomes == {"truncated"}
    assert capfd.readouterr().err == ""


def test_no_samples(tmp_path):
    path = write(tmp_path / "zero.wav", np.zeros((0, 2), dtype=np.float32), 44100)
    with pytest.raises(AudioError, match="no samples"):
        decode_audio(path)


def test_silent_file_is_rejected(tmp_path):
    path = write(tmp_path / "silent.wav", np.zeros(1000, dtype=np.float32), 44100, subtype="PCM_16")
    with pytest.raises(AudioError, match="silent: all samples are zero"):
        decode_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_rejected(tmp_path, bad):
    data = tone(1000, 44100)
    data[500] = bad
    path = write(tmp_path / "nan.wav", data, 44100)
    with pytest.raises(AudioError, match="non-finite"):
        decode_audio(path)


@pytest.mark.parametrize("sr_in, sr_out", [(44100, 16000), (48000, 44100), (22050, 44100)])
def test_resample_length_and_content(sr_in, sr_out):
    y = tone(sr_in, sr_in, 440)
    out = resample(y, sr_in, sr_out)
    assert out.dtype == np.float32 and len(out) == round(len(y) * sr_out / sr_in)
    # the tone survives: compare with the tone sampled at the new rate, away from the edges
    ref = tone(len(out), sr_out, 440)
    assert np.max(np.abs(out[1000:-1000] - ref[1000:-1000])) < 1e-3


def test_resample_same_rate_is_identity():
    y = tone(100, 44100)
    assert resample(y, 44100, 44100) is y


def test_audio_sha256_of_path_bytes_and_file_object(tmp_path):
    payload = bytes(range(256)) * 9000
    path = tmp_path / "x.ogg"
    path.write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    assert audio_sha256(path) == want
    assert audio_sha256(payload) == want
    with open(path, "rb") as f:
        assert audio_sha256(f) == want
        assert f.tell() == 0  # put back for decoding


def make_level(folder, audio_name="song.egg", info_song_name="Song.EGG", sr=44100):
    folder.mkdir()
    (folder / "Info.dat").write_text(json.dumps({"_version": "2.0.0", "_songFilename": info_song_name}))
    if audio_name:
        write(folder / audio_name, tone(sr // 10, sr), sr, "OGG", "VORBIS")
    return folder


def test_open_source_audio_level_folder_case_insensitive(tmp_path):
    level = make_level(tmp_path / "lvl")
    f, name, data = open_source_audio(Source("lvl", str(level), "level"))
    with f:
        assert data is None
        assert name.endswith("song.egg")
        y, sr = decode_audio(f, name)
    assert sr == 44100 and len(y) == 4410


def test_open_source_audio_zip(tmp_path):
    level = make_level(tmp_path / "lvl")
    zpath = tmp_path / "lvl.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in level.iterdir():
            z.write(p, p.name)
    f, name, data = open_source_audio(Source("lvl", str(zpath), "level"))
    assert data == (level / "song.egg").read_bytes()
    assert "!" in name and name.endswith("song.egg")
    y, _ = decode_audio(f, name)
    assert len(y) == 4410


def test_open_source_audio_missing_audio_is_audio_error(tmp_path):
    level = make_level(tmp_path / "lvl", audio_name=None)
    with pytest.raises(AudioError, match="missing"):
        open_source_audio(Source("lvl", str(level), "level"))


def test_open_source_audio_bare_file(tmp_path):
    path = write(tmp_path / "a.wav", tone(100, 8000), 8000)
    f, name, data = open_source_audio(Source("a", str(path), "audio"))
    with f:
        assert name == str(path) and data is None and f.read(4) == b"RIFF"


def adts_aac_bytes(n_frames=200, seed=0) -> bytes:
    """AAC in ADTS frames (sync word 0xFFF1, frame length in the header): a codec soundfile does not read."""
    rng = np.random.default_rng(seed)
    out = b""
    for _ in range(n_frames):
        payload = rng.bytes(200)
        n = 7 + len(payload)
        out += bytes([0xFF, 0xF1, 0x50, 0x80 | ((n >> 11) & 3), (n >> 3) & 0xFF, ((n & 7) << 5) | 0x1F, 0xFC])
        out += payload
    return out


@pytest.mark.parametrize("payload", [
    adts_aac_bytes(),
    b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom\x00\x00\x00\x00" + bytes(4000),  # AAC in MP4
    b"\x89PNG\r\n\x1a\n" + bytes(3000),  # a cover image saved under the song's name
], ids=["adts-aac", "m4a", "png"])
def test_unsupported_codec_named_egg_is_not_a_readable_audio_file(tmp_path, payload):
    level = make_level(tmp_path / "lvl", audio_name=None)
    (level / "song.egg").write_bytes(payload)
    f, name, _ = open_source_audio(Source("lvl", str(level), "level"))
    with f, pytest.raises(AudioError) as e:
        decode_audio(f, name)
    assert e.value.path == name and name.endswith("lvl/song.egg")
    assert e.value.reason.startswith("not a readable audio file: ")


def test_vorbis_whose_last_granule_overshoots_its_audio_a_little_decodes():
    from mapkit.preprocess.audio import VORBIS_END_SLACK

    # a real song's encoder wrote its last granule position 63 samples past all the audio its packets hold
    sr = 44100
    whole = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    declared, capacity = vorbis_length(whole)
    held, _ = sf.read(io.BytesIO(with_granule(whole, capacity)), dtype="float32")  # every sample the packets hold
    assert declared < len(held) and len(held) + VORBIS_END_SLACK + 1 < capacity
    y, _ = decode_audio(io.BytesIO(with_granule(whole, len(held) + 63)), name="overshoot.egg")
    assert len(held) <= len(y) <= len(held) + 63  # FFmpeg may pad the end with silence, libsndfile does not
    lie = len(held) + VORBIS_END_SLACK + 1  # more than the slack: samples are missing
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(with_granule(whole, lie)), name="short.egg")
    assert e.value.reason.startswith(f"truncated: header declares {lie} samples, only "), e.value.reason


def test_a_stream_short_within_the_slack_returns_only_decoded_samples():
    from mapkit.preprocess.audio import _decode_sndfile

    sr = 44100
    data = encoded(np.stack([tone(2 * sr, sr), tone(2 * sr, sr, 550)], axis=1), sr, "OGG", "VORBIS")
    declared, _ = vorbis_length(data)
    lie = with_granule(data, declared + 500)
    _, n, said, _ = _decode_sndfile(io.BytesIO(lie), "x")  # libsndfile: a buffer of the declared length, n filled
    assert said == declared + 500 and n < said
    y, _ = decode_audio(io.BytesIO(lie), name="short.egg")
    # the undecoded tail of that buffer never comes back; FFmpeg may instead pad the end with silence
    assert len(y) == n or (len(y) == said and not y[n:].any())


def test_chained_ogg_files_are_refused_not_cut_short():
    from mapkit.preprocess.audio import ogg_logical_streams

    sr = 44100
    first = encode_ogg_vorbis(np.stack([tone(3 * sr, sr), tone(3 * sr, sr, 550)], axis=1), sr, serial=7)
    second = encode_ogg_vorbis(np.stack([tone(sr, sr), tone(sr, sr, 550)], axis=1), sr, serial=8)
    assert ogg_logical_streams(first) == 1 and ogg_logical_streams(first + second) == 2
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(first + second), name="chained.egg")
    assert e.value.path == "chained.egg"
    assert e.value.reason == "chained Ogg file (2 logical streams one after another): not supported"


def test_a_loose_ogg_file_over_the_audio_cap_is_refused_not_read_whole(tmp_path, monkeypatch):
    from mapkit.preprocess.limits import ENV_MAX_AUDIO

    sr = 44100
    data = encode_ogg_vorbis(np.stack([tone(sr, sr), tone(sr, sr, 550)], axis=1), sr, serial=7)
    path = tmp_path / "song.egg"
    path.write_bytes(data)
    assert len(decode_audio(path)[0]) == sr  # under the default cap
    monkeypatch.setenv(ENV_MAX_AUDIO, str(len(data) - 1))
    with pytest.raises(AudioError) as e:
        decode_audio(path)
    assert e.value.path == str(path)
    assert e.value.reason.startswith(f"too large (more than {len(data) - 1} bytes"), e.value.reason


def test_a_flac_header_declaring_a_huge_length_allocates_only_what_decodes():
    # STREAMINFO's 36-bit sample count set to its maximum (256 GiB of float32 samples): a clean error
    sr = 44100
    data = bytearray(encoded(tone(sr, sr)[:, None], sr, "FLAC", "PCM_16"))
    info = 8  # after "fLaC" and the metadata block header
    field = int.from_bytes(data[info + 10: info + 18], "big") | ((1 << 36) - 1)
    data[info + 10: info + 18] = field.to_bytes(8, "big")
    with pytest.raises(AudioError) as e:
        decode_audio(io.BytesIO(bytes(data)), name="huge.flac")
    assert e.value.reason.startswith("truncated") and str((1 << 36) - 1) in e.value.reason, e.value.reason
