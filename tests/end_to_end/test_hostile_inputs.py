"""Hostile inputs (issue 10): FIFOs, devices, links, bombs, broken zip members, odd names, stray info files.

One input folder holds every case beside good levels; extract and
build-targets run over it once (small caps through MAPKIT_MAX_*_BYTES so the
bombs stay small), and each case is checked for its own reason, the good
items beside it, and a store that validates afterwards.
"""

import gzip
import json
import os
import shutil
import struct
import time
import zipfile

import pytest

from mapkit.runs.build_targets import build_targets, level_files_sha256
from mapkit.datasets.names import name_problem
from mapkit.datasets.validation import validate_store
from mapkit.errors import LevelError, MapkitError
from mapkit.runs.extract import extract
from mapkit.preprocess.container import LevelContainer
from mapkit.preprocess.jsonio import load_json_bytes
from mapkit.preprocess.levels import read_level
from mapkit.preprocess.limits import ReadLimits, open_regular, read_limits
from mapkit.preprocess.sources import discover
from tests.runs.test_extract import write_song

CAP = 1 << 20  # the caps in force for this module: 1 MiB of JSON, 1 MiB of audio from a zip


def notes(*beats):
    return [{"_time": b, "_lineIndex": 1, "_lineLayer": 0, "_type": 0, "_cutDirection": 1} for b in beats]


def difficulty(*beats) -> bytes:
    return json.dumps({"_version": "2.2.0", "_notes": notes(*beats), "_events": [], "_obstacles": []}).encode()


def info(entries=(("Standard", "Hard", "HardStandard.dat"), ("Standard", "Expert", "ExpertStandard.dat"))):
    sets = {}
    for char, diff, fname in entries:
        sets.setdefault(char, []).append({"_difficulty": diff, "_difficultyRank": 7, "_beatmapFilename": fname,
                                          "_noteJumpMovementSpeed": 16})
    return json.dumps({"_version": "2.0.0", "_songName": "x", "_beatsPerMinute": 240, "_songFilename": "song.egg",
                       "_songTimeOffset": 0, "_difficultyBeatmapSets": [
                           {"_beatmapCharacteristicName": c, "_difficultyBeatmaps": d} for c, d in sets.items()]
                       }).encode()


def level_files(seed=0, **override) -> dict:
    """The files of a good two-difficulty level (name -> bytes), ``override`` replacing some."""
    files = {"Info.dat": info(), "HardStandard.dat": difficulty(1, 2), "ExpertStandard.dat": difficulty(1, 2, 3)}
    files.update(override)
    return files


_SONGS = {}


def song_bytes(tmp, seed=0) -> bytes:
    if seed not in _SONGS:
        _SONGS[seed] = write_song(tmp / f"song{seed}.egg", seconds=1.0, seed=seed).read_bytes()
    return _SONGS[seed]


def make_level(folder, tmp, seed=0, **override):
    """A level folder (``folder`` may be bytes, for names that are not UTF-8)."""
    os.makedirs(folder)
    files = {"song.egg": song_bytes(tmp, seed), **level_files(**override)}
    for name, data in files.items():
        if data is not None:
            with open(os.path.join(folder, os.fsencode(name) if isinstance(folder, bytes) else name), "wb") as f:
                f.write(data)
    return folder


def make_zip(path, tmp, seed=0, method=zipfile.ZIP_DEFLATED, **override):
    files = {"song.egg": song_bytes(tmp, seed), **level_files(**override)}
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _central_entry(data: bytes, name: str) -> int:
    """Offset of the central directory entry of ``name``."""
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        n, m, k = struct.unpack("<HHH", data[pos + 28:pos + 34])
        if data[pos + 46:pos + 46 + n] == name.encode():
            return pos
        pos = data.find(b"PK\x01\x02", pos + 46 + n + m + k)
    raise KeyError(name)


def patch_zip(path, member, flag_bits=None, method=None, flip_data_byte=False):
    """Make a member look encrypted, use another compression method, or fail its CRC."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        zi = z.getinfo(member)
    local, central = zi.header_offset, _central_entry(bytes(data), member)
    if flag_bits is not None:
        for off in (local + 6, central + 8):
            data[off:off + 2] = struct.pack("<H", struct.unpack("<H", data[off:off + 2])[0] | flag_bits)
    if method is not None:
        for off in (local + 8, central + 10):
            data[off:off + 2] = struct.pack("<H", method)
    if flip_data_byte:
        n, m = struct.unpack("<HH", data[local + 26:local + 30])
        data[local + 30 + n + m + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def big_json(n_bytes: int) -> bytes:
    """A valid difficulty file of ``n_bytes`` (mostly whitespace): compresses to almost nothing."""
    doc = difficulty(1, 2)
    return doc[:-1] + b" " * (n_bytes - len(doc)) + b"}"


@pytest.fixture(scope="module")
def caps():
    old = {k: os.environ.get(k) for k in ("MAPKIT_MAX_JSON_BYTES", "MAPKIT_MAX_AUDIO_BYTES")}
    os.environ["MAPKIT_MAX_JSON_BYTES"] = os.environ["MAPKIT_MAX_AUDIO_BYTES"] = str(CAP)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


NON_UTF8 = os.fsdecode(b"caf\xe9")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, caps):
    tmp = tmp_path_factory.mktemp("hostile-inputs")
    inp, outside = tmp / "in", tmp / "outside"
    inp.mkdir()
    make_level(str(outside / "elsewhere"), tmp, seed=9)

    make_level(str(inp / "good"), tmp, seed=1)
    make_zip(inp / "goodzip.zip", tmp, seed=2)
    # not regular files, as the song, a difficulty, the info file, a file nobody names, a bare song
    make_level(str(inp / "fifo-song"), tmp, seed=3)
    os.unlink(inp / "fifo-song" / "song.egg")
    os.mkfifo(inp / "fifo-song" / "song.egg")
    make_level(str(inp / "fifo-diff"), tmp, seed=4)
    os.unlink(inp / "fifo-diff" / "ExpertStandard.dat")
    os.mkfifo(inp / "fifo-diff" / "ExpertStandard.dat")
    make_level(str(inp / "fifo-info"), tmp, seed=5)
    os.unlink(inp / "fifo-info" / "Info.dat")
    os.mkfifo(inp / "fifo-info" / "Info.dat")
    make_level(str(inp / "fifo-lightshow"), tmp, seed=6)
    os.mkfifo(inp / "fifo-lightshow" / "Lightshow.dat")
    os.mkfifo(inp / "fifo.ogg")
    # links: a song linked to /dev/zero, and entries leaving the input folder
    make_level(str(inp / "zero-song"), tmp, seed=7)
    os.unlink(inp / "zero-song" / "song.egg")
    os.symlink("/dev/zero", inp / "zero-song" / "song.egg")
    os.symlink("/dev/zero", inp / "devzero.ogg")
    os.symlink("/", inp / "rootlink")
    os.symlink(outside / "elsewhere", inp / "outside-level")
    # a link to a file inside its level is followed
    make_level(str(inp / "linked-song"), tmp, seed=8)
    os.rename(inp / "linked-song" / "song.egg", inp / "linked-song" / "real.egg")
    os.symlink("real.egg", inp / "linked-song" / "song.egg")
    # a pack folder with a stray info file: its levels are still found
    (inp / "pack").mkdir()
    (inp / "pack" / "Info.dat").write_bytes(info())
    make_level(str(inp / "pack" / "packed"), tmp, seed=10)
    # zip members: encrypted, unsupported method, bad CRC, bombs
    patch_zip(make_zip(inp / "encrypted.zip", tmp, seed=11), "ExpertStandard.dat", flag_bits=0x1)
    patch_zip(make_zip(inp / "badmethod.zip", tmp, seed=12), "song.egg", method=97)
    patch_zip(make_zip(inp / "badcrc.zip", tmp, seed=13, method=zipfile.ZIP_STORED), "HardStandard.dat",
              flip_data_byte=True)
    make_zip(inp / "bombjson.zip", tmp, seed=14, **{"ExpertStandard.dat": big_json(2 * CAP)})
    with zipfile.ZipFile(inp / "bombaudio.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in level_files().items():
            z.writestr(name, data)
        z.writestr("song.egg", song_bytes(tmp, 15) + bytes(2 * CAP))
    make_level(str(inp / "gzbomb"), tmp, seed=16, **{"ExpertStandard.dat": gzip.compress(big_json(2 * CAP))})
    # names HDF5 cannot hold; a difficulty listed three times; a NUL in a characteristic name
    make_zip(inp / "..zip", tmp, seed=17)
    make_level(os.fsencode(inp) + b"/caf\xe9", tmp, seed=18)
    make_level(str(inp / "ctl\x01name"), tmp, seed=19)
    make_level(str(inp / "dup"), tmp, seed=20, **{"Info.dat": info([("Standard", "Expert", "ExpertStandard.dat")] * 3
                                                                   + [("Standard", "Hard", "HardStandard.dat")])})
    make_level(str(inp / "nul-char"), tmp, seed=21, **{"Info.dat": info(
        [("Stan\x00dard", "Expert", "ExpertStandard.dat"), ("Standard", "Hard", "HardStandard.dat")])})

    store = tmp / "store"
    t0 = time.monotonic()
    ex = extract(inp, store=store, jobs=1, progress=False)
    bt = build_targets(inp, store=store, characteristic="all", jobs=1, progress=False)
    elapsed = time.monotonic() - t0
    return {"inp": inp, "store": store, "extract": ex, "targets": bt, "elapsed": elapsed,
            "valid": validate_store(store, progress=False)}


def by_id(report):
    return {r.song_id: r for r in report.items}


def test_the_run_ends_quickly_keeps_the_good_items_and_the_store_validates(hostile):
    assert hostile["elapsed"] < 120
    valid = hostile["valid"]
    assert valid.ok, valid.summary()
    ex = by_id(hostile["extract"])
    for sid in ("good", "goodzip", "fifo-diff", "fifo-lightshow", "linked-song", "packed", "encrypted",
                "badcrc", "bombjson", "gzbomb", "dup", "nul-char"):
        assert ex[sid].status == "ok", (sid, ex[sid].reason)
    bt = by_id(hostile["targets"])
    for item in ("good/Standard/Expert", "good/Standard/Hard", "goodzip/Standard/Expert",
                 "fifo-lightshow/Standard/Expert", "linked-song/Standard/Expert"):
        assert bt[item].status == "ok", (item, bt[item].reason)


@pytest.mark.parametrize("song_id, reason", [
    ("fifo-song", "song.egg: not a regular file (a FIFO)"),
    ("fifo-info", "Info.dat: not a regular file (a FIFO)"),
    ("fifo", "fifo.ogg: not a regular file (a FIFO)"),
    ("zero-song", "song.egg: symbolic link leads outside the level folder"),
    ("badmethod", "badmethod.zip!song.egg: unsupported zip compression method"),
    ("bombaudio", "bombaudio.zip!song.egg: too large when decompressed (more than 1048576 bytes"),
    (".", "song id '.' cannot be stored: it is '.' or '..'"),
    (NON_UTF8, "cannot be stored: it is not valid UTF-8"),
    ("ctl\x01name", "cannot be stored: it holds the control character '\\x01'"),
])
def test_extract_reports_each_bad_input_with_its_reason(hostile, song_id, reason):
    item = by_id(hostile["extract"])[song_id]
    assert item.status == "failed" and reason in (item.source + ": " + item.reason), item


@pytest.mark.parametrize("item, status, reason", [
    ("fifo-diff/Standard/Expert", "quarantined", "ExpertStandard.dat: not a regular file (a FIFO)"),
    ("fifo-diff/Standard/Hard", "ok", ""),
    ("encrypted/Standard/Expert", "quarantined", "encrypted.zip!ExpertStandard.dat: encrypted zip member"),
    ("encrypted/Standard/Hard", "ok", ""),
    ("badcrc/Standard/Hard", "quarantined", "badcrc.zip!HardStandard.dat: corrupt zip member: Bad CRC-32"),
    ("badcrc/Standard/Expert", "ok", ""),
    ("bombjson/Standard/Expert", "quarantined", "ExpertStandard.dat: too large when decompressed"),
    ("gzbomb/Standard/Expert", "quarantined", "ExpertStandard.dat: too large when decompressed"),
    ("dup/Standard/Expert", "ok", "3 of 3 notes kept"),
    ("dup/Standard/Expert (listed again, #2)", "quarantined", "duplicate difficulty: Standard/Expert listed twice"),
    ("dup/Standard/Expert (listed again, #3)", "quarantined", "duplicate difficulty"),
    ("dup/Standard/Hard", "ok", "2 of 2 notes kept"),
    ("nul-char/Stan\x00dard/Expert", "quarantined", "cannot be stored as an HDF5 group: characteristic name"),
    ("nul-char/Standard/Hard", "ok", ""),
])
def test_build_targets_fails_only_what_depends_on_the_bad_file(hostile, item, status, reason):
    got = by_id(hostile["targets"])[item]
    assert got.status == status and reason in got.reason, got


def test_links_leaving_the_input_and_stray_info_files_are_reported_as_ignored(hostile):
    inp = hostile["inp"]
    ignored = dict(hostile["extract"].ignored)
    assert set(ignored) == {str(inp / "devzero.ogg"), str(inp / "rootlink"), str(inp / "outside-level"),
                            str(inp / "pack" / "Info.dat")}
    assert "leads outside the input folder: not followed" in ignored[str(inp / "rootlink")]
    assert "stray info file ignored" in ignored[str(inp / "pack" / "Info.dat")]
    assert "elsewhere" not in by_id(hostile["extract"]) and "outside-level" not in by_id(hostile["extract"])
    assert hostile["extract"].exit_code == 2 and "4 input entries ignored" in hostile["extract"].summary()
    report = json.loads(hostile["extract"].report_path.read_text())
    assert {e["path"] for e in report["ignored"]} == set(ignored)


def test_a_stray_info_file_in_the_input_folder_hides_nothing(tmp_path):
    inp = tmp_path / "in"
    make_level(str(inp / "a"), tmp_path)
    with zipfile.ZipFile(inp / "b.zip", "w") as z:
        z.writestr("Info.dat", info())
    (inp / "Info.dat").write_bytes(info())
    ignored = []
    assert [s.song_id for s in discover(inp, ignored=ignored)] == ["a", "b"]
    assert ignored == [(str(inp / "Info.dat"), ignored[0][1])] and "searched as a pack" in ignored[0][1]
    # a level with a sub-folder of backups (an editor's autosaves) stays one level
    make_level(str(inp / "a" / "autosaves" / "old"), tmp_path)
    assert [s.song_id for s in discover(inp / "a")] == ["a"]


def test_open_regular_never_blocks_and_names_what_it_found(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a folder")):
        with pytest.raises(MapkitError, match=f"not a regular file \\({kind}\\)"):
            open_regular(path)
    (tmp_path / "f").write_bytes(b"ok")
    with open_regular(tmp_path / "f") as f:
        assert f.read() == b"ok"
    import socket
    import tempfile

    short = tempfile.mkdtemp(dir="/tmp")  # a socket's path must be short
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(os.path.join(short, "s.ogg"))
            with pytest.raises(MapkitError, match="not a regular file \\(a socket\\)"):
                open_regular(os.path.join(short, "s.ogg"))
    finally:
        shutil.rmtree(short)


def test_the_json_cap_applies_to_plain_gzip_and_zip_files(tmp_path):
    limits = ReadLimits(max_json_bytes=1000, max_audio_bytes=1000)
    lv = tmp_path / "lv"
    lv.mkdir()
    (lv / "Info.dat").write_bytes(b"{" + b" " * 2000 + b"}")
    with pytest.raises(LevelError, match="Info.dat: too large \\(more than 1000 bytes"):
        LevelContainer(lv, limits).read_info_json()
    bomb = gzip.compress(b"[" + b" " * 5000 + b"]")
    with pytest.raises(LevelError, match="too large when decompressed"):
        load_json_bytes(bomb, "x.dat", max_bytes=1000)
    assert load_json_bytes(bomb, "x.dat", max_bytes=6000) == []
    assert load_json_bytes(gzip.compress(b"[1]") + gzip.compress(b" "), "x", max_bytes=10) == [1]
    with pytest.raises(LevelError, match="corrupt gzip data"):
        load_json_bytes(gzip.compress(b"[1]")[:-3], "x", max_bytes=10)
    with pytest.raises(ValueError):
        ReadLimits(max_json_bytes=0)


def test_read_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MAPKIT_MAX_JSON_BYTES", "1234")
    monkeypatch.delenv("MAPKIT_MAX_AUDIO_BYTES", raising=False)
    assert read_limits() == ReadLimits(max_json_bytes=1234)
    monkeypatch.setenv("MAPKIT_MAX_AUDIO_BYTES", "lots")
    with pytest.raises(MapkitError, match="MAPKIT_MAX_AUDIO_BYTES: environment variable must be a positive"):
        read_limits()


def test_a_difficulty_listed_3000_times_is_read_once(tmp_path):
    lv = make_level(str(tmp_path / "lv"), tmp_path, **{"Info.dat": info([("Standard", "Expert",
                                                                            "ExpertStandard.dat")] * 3000)})
    t0 = time.monotonic()
    level = read_level(lv)
    assert time.monotonic() - t0 < 5
    assert len(level.difficulties) == 3000
    assert level.difficulties[0].quarantine is None and len(level.difficulties[0].notes) == 3
    assert all(d.quarantine.startswith("duplicate difficulty") and d.counts == {} for d in level.difficulties[1:])


def test_the_level_hash_reads_only_named_files(tmp_path):
    lv = make_level(str(tmp_path / "lv"), tmp_path)
    before = level_files_sha256(lv)
    os.mkfifo(os.path.join(lv, "Lightshow.dat"))  # would block forever if it were opened
    (tmp_path / "lv" / "notes.json").write_text("{}")
    assert level_files_sha256(lv) == before
    (tmp_path / "lv" / "ExpertStandard.dat").write_bytes(difficulty(1, 2))
    assert level_files_sha256(lv) != before
    # an unreadable named file is hashed by its reason: the level is still hashed
    os.unlink(os.path.join(lv, "HardStandard.dat"))
    os.symlink("/dev/zero", os.path.join(lv, "HardStandard.dat"))
    assert len(level_files_sha256(lv)) == 64


@pytest.mark.parametrize("as_zip", [False, True])
def test_two_info_files_one_rule_for_folders_and_zips(tmp_path, as_zip):
    good, junk = info(), b"not json"
    if as_zip:
        path = tmp_path / "two.zip"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in (("info.dat", junk), ("Info.dat", good), ("song.egg", song_bytes(tmp_path)),
                               ("HardStandard.dat", difficulty(1)), ("ExpertStandard.dat", difficulty(1))):
                z.writestr(name, data)
    else:
        path = make_level(str(tmp_path / "two"), tmp_path)
        (tmp_path / "two" / "info.dat").write_bytes(junk)
    level = read_level(path)
    assert level.info_filename == "Info.dat"
    assert any("info files differing only in case: Info.dat, info.dat" in w for w in level.warnings)


def test_zip_members_stored_as_links_are_not_read(tmp_path):
    path = tmp_path / "l.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("Info.dat", info())
        zi = zipfile.ZipInfo("song.egg")
        zi.external_attr = (0o120777 << 16)  # a symbolic link, as `zip --symlinks` stores it
        z.writestr(zi, "/dev/zero")
    with LevelContainer(path) as c, pytest.raises(LevelError, match="song.egg: not a regular file"):
        c.read_bytes("song.egg")


@pytest.mark.parametrize("name, ok", [("My Song (Mapper) ✓", True), ("%20", True), (".", False), ("..", False),
                                      ("a/b", False), ("a\x00b", False), ("tab\tname", False), ("", False),
                                      (NON_UTF8, False), ("\x7f", False)])
def test_which_names_the_store_can_hold(name, ok):
    assert (name_problem(name) is None) == ok


def test_a_fifo_given_as_the_input_is_refused_without_blocking(tmp_path, caps):
    os.mkfifo(tmp_path / "x.zip")
    with pytest.raises(LevelError, match="not a regular file"):
        read_level(tmp_path / "x.zip")
    shutil.rmtree(tmp_path / "store", ignore_errors=True)


def test_inspect_reads_the_levels_of_a_pack_not_its_stray_info_file(tmp_path):
    from mapkit.runs.inspect import inspect_levels

    pack = tmp_path / "pack"
    make_level(str(pack / "a"), tmp_path)
    (pack / "Info.dat").write_bytes(info())
    results = list(inspect_levels([pack]))
    assert [(r.level.song_id, r.error) for r in results] == [("a", None)]


def test_inspect_over_the_hostile_folder_reports_every_level_without_a_traceback(hostile):
    from click.testing import CliRunner

    from mapkit.cli import main

    result = CliRunner().invoke(main, ["inspect", str(hostile["inp"])])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2  # some levels unreadable
    assert "Traceback" not in result.output
    assert "Info.dat: not a regular file (a FIFO)" in result.output
    assert "QUARANTINED: unreadable: " in result.output and "encrypted zip member" in result.output
