import json
from pathlib import Path

from click.testing import CliRunner

from mapkit.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "maps"
JOURNEY = FIXTURES / "JOURNEY"


def run(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def json_counts(path: Path):
    doc = json.loads(path.read_text())
    if "_notes" in doc:
        return (sum(n["_type"] in (0, 1) for n in doc["_notes"]), sum(n["_type"] == 3 for n in doc["_notes"]))
    return len(doc["colorNotes"]), len(doc["bombNotes"])


def test_inspect_prints_the_facts_of_each_difficulty():
    r = run(JOURNEY, "--characteristic", "all")
    assert r.exit_code == 0, r.output
    assert "v2.0.0 | BPM 185 | audio JOURNEY.egg" in r.output
    assert "tempo: 185 BPM constant" in r.output
    for char, diff, fname in [("OneSaber", "ExpertPlus", "ExpertPlusOneSaber.dat"),
                              ("Standard", "Easy", "EasyStandard.dat")]:
        notes, bombs = json_counts(JOURNEY / fname)
        block = r.output.split(f"{char}/{diff}  {fname}")[1]
        assert f"read: notes {notes}, bombs {bombs}," in block.splitlines()[2]
    assert "v3.1.0 (keys: v3)" in r.output and "v2.6.0 (keys: v2)" in r.output


def test_inspect_json_has_every_note_sorted():
    r = run(JOURNEY, "--json")
    assert r.exit_code == 0
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert len(docs) == 1
    level = docs[0]
    assert level["bpm"] == 185 and level["info_version"] == "2.0.0" and level["song_filename"] == "JOURNEY.egg"
    assert [d["characteristic"] for d in level["difficulties"]] == ["Standard"] * 5
    for d in level["difficulties"]:
        notes, bombs = json_counts(JOURNEY / d["filename"])
        assert d["counts"]["notes"] == notes and d["counts"]["bombs"] == bombs
        assert len(d["notes"]) == notes + bombs and d["drops"] == {} and d["quarantine"] is None
        assert {n["color"] for n in d["notes"]} == {0, 1, 3}
        keys = [(n["time_s"], n["column"], n["row"]) for n in d["notes"]]
        assert keys == sorted(keys)
        assert abs(d["notes"][0]["time_s"] - d["notes"][0]["beat"] * 60 / 185) < 1e-12


def test_unreadable_input_is_reported_and_the_others_still_printed(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Info.dat").write_text("{ broken")
    r = CliRunner().invoke(main, ["inspect", str(bad), str(FIXTURES / "werewolf howls"),
                                                  str(tmp_path / "missing.zip")])
    assert r.exit_code == 2  # finished, some items failed
    assert "werewolf howls" in r.stdout and "BPM 222" in r.stdout
    assert f"{bad / 'Info.dat'}: invalid JSON" in r.stderr
    assert "missing.zip: no such file or folder" in r.stderr


def test_a_folder_of_levels_is_expanded():
    r = run(FIXTURES, "--json")
    assert r.exit_code == 0
    assert [json.loads(line)["song_id"] for line in r.output.splitlines()] == ["JOURNEY", "werewolf howls"]


def test_song_offset_option(tmp_path):
    level = tmp_path / "off"
    level.mkdir()
    info = json.loads((FIXTURES / "werewolf howls" / "Info.dat").read_text())
    info["_songTimeOffset"] = -0.25
    info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"] = info["_difficultyBeatmapSets"][0]["_difficultyBeatmaps"][:1]
    (level / "Info.dat").write_text(json.dumps(info))
    (level / "EasyStandard.dat").write_bytes((FIXTURES / "werewolf howls" / "EasyStandard.dat").read_bytes())
    r = run(level)
    assert r.exit_code == 0 and "QUARANTINED: non-zero _songTimeOffset -0.25 s" in r.output
    applied = json.loads(run(level, "--json", "--song-offset", "apply").output)
    d = applied["difficulties"][0]
    assert applied["quarantine"] is None and d["quarantine"] is None
    first = d["notes"][0]
    assert abs(first["time_s"] - (first["beat"] * 60 / 222 - 0.25)) < 1e-12


def test_inspect_header_shows_an_invalid_song_offset(tmp_path):
    """An offset that is not a finite number is shown as such, not as '0 s'."""
    for i, raw in enumerate(['"abc"', '"inf"', "1e400"]):
        level = tmp_path / f"lvl{i}"
        level.mkdir()
        info = json.loads((JOURNEY / "Info.dat").read_text())
        info["_songTimeOffset"] = "OFFSET"
        (level / "Info.dat").write_text(json.dumps(info).replace('"OFFSET"', raw))
        for f in JOURNEY.glob("*Standard.dat"):
            (level / f.name).write_bytes(f.read_bytes())
        r = run(level)
        header = r.output.splitlines()[1]
        assert "song offset 0 s" not in header, header
        assert "song offset invalid (" in header and "is not a finite number)" in header
        assert "QUARANTINED: _songTimeOffset" in r.output
    ok = run(JOURNEY)
    assert "song offset 0 s |" in ok.output.splitlines()[1]


def test_inspect_json_says_why_the_offset_is_invalid(tmp_path):
    level = tmp_path / "lvl"
    level.mkdir()
    info = json.loads((JOURNEY / "Info.dat").read_text())
    info["_songTimeOffset"] = "abc"
    (level / "Info.dat").write_text(json.dumps(info))
    doc = json.loads(run(level, "--json").output.splitlines()[0])
    assert doc["song_time_offset"] == 0.0 and doc["song_time_offset_error"] == "'abc' is not a finite number"
    assert json.loads(run(JOURNEY, "--json").output.splitlines()[0])["song_time_offset_error"] is None
