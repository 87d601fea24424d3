"""Level identity and flags: the community level hash, automap detection, BeatSaver metadata, trainer filters."""

import hashlib
import json
import math
import zipfile

import pytest
from click.testing import CliRunner

from mapkit.runs.build_targets import build_targets
from mapkit.cli import main
from mapkit.datasets.filters import filter_songs
from mapkit.datasets.store import Store
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract
from mapkit.preprocess.automap import automap_evidence
from mapkit.preprocess.levelhash import level_hash
from mapkit.preprocess.metadata import metadata_attrs, read_metadata

JOURNEY = "tests/fixtures/maps/JOURNEY"


def songcore_v2_hash(folder):
    """SongCore's rule written out for a v2 folder: SHA-1 of Info.dat, then each _beatmapFilename in info order."""
    info_bytes = (folder / "Info.dat").read_bytes()
    h = hashlib.sha1(info_bytes)
    for s in json.loads(info_bytes)["_difficultyBeatmapSets"]:
        for d in s["_difficultyBeatmaps"]:
            h.update((folder / d["_beatmapFilename"]).read_bytes())
    return h.hexdigest()


def test_level_hash_of_a_real_level_follows_songcore(tmp_path):
    from pathlib import Path

    assert level_hash(JOURNEY) == songcore_v2_hash(Path(JOURNEY))
    # the same level zipped (in a folder, as BeatSaver zips sometimes are) has the same hash
    with zipfile.ZipFile(tmp_path / "j.zip", "w") as z:
        for f in Path(JOURNEY).iterdir():
            z.write(f, f"JOURNEY/{f.name}")
    assert level_hash(tmp_path / "j.zip") == level_hash(JOURNEY)
    # a UTF-8 BOM is not hashed (SongCore reads the info file as text)
    bom = tmp_path / "bom"
    bom.mkdir()
    for f in Path(JOURNEY).iterdir():
        data = f.read_bytes()
        (bom / f.name).write_bytes(b"\xef\xbb\xbf" + data if f.name == "Info.dat" else data)
    assert level_hash(bom) == level_hash(JOURNEY)


def test_level_hash_v4_order_audio_data_then_beatmap_and_lightshow(tmp_path):
    files = {"BPMInfo.dat": b'{"version":"4.0.0"}', "Easy.dat": b'{"version":"4.0.0","colorNotes":[]}',
             "Hard.dat": b'{"version":"4.0.0","colorNotes":[1]}', "Lights.dat": b'{"version":"4.0.0"}'}
    info = {"version": "4.0.1", "audio": {"songFilename": "s.ogg", "bpm": 120, "audioDataFilename": "BPMInfo.dat"},
            "difficultyBeatmaps": [
                {"characteristic": "Standard", "difficulty": "Easy", "beatmapDataFilename": "Easy.dat",
                 "lightshowDataFilename": "Lights.dat"},
                {"characteristic": "Standard", "difficulty": "Hard", "beatmapDataFilename": "Hard.dat",
                 "lightshowDataFilename": "Missing.dat"}]}
    info_bytes = json.dumps(info).encode()
    (tmp_path / "Info.dat").write_bytes(info_bytes)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    want = hashlib.sha1(info_bytes + files["BPMInfo.dat"] + files["Easy.dat"] + files["Lights.dat"]
                        + files["Hard.dat"]).hexdigest()  # the missing lightshow file is left out
    assert level_hash(tmp_path) == want


def test_automap_rules():
    beat_sage = {"_levelAuthorName": "Beat Sage", "_customData": {"_editors": {
        "_lastEditedBy": "beatsage", "beatsage": {"version": "2.0.0.flow", "events": ["DotBlocks"]}}}}
    ev = automap_evidence(beat_sage)
    assert len(ev) == 3 and all("(Beat Sage)" in e for e in ev)
    inferno = {"_levelAuthorName": "InfernoSaber",
               "_customData": {"_editors": {"_lastEditedBy": "InfernoSaber", "InfernoSaber": {"version": "1.7.1"}}}}
    assert len(automap_evidence(inferno)) == 3
    v4 = {"difficultyBeatmaps": [{"beatmapAuthors": {"mappers": ["someone", "Beat Sage"]}}]}
    assert automap_evidence(v4) == ['beatmapAuthors.mappers = "Beat Sage" (Beat Sage)']
    human = json.loads(open(f"{JOURNEY}/Info.dat", encoding="utf-8").read())  # edited in MMA2 and ChroMapper
    assert automap_evidence(human) == [] and automap_evidence({"_customData": "junk"}) == []


@pytest.fixture(scope="module")
def flagged_store(tmp_path_factory):
    """Three demo levels: one marked as Beat Sage output, one with a good BeatSaver score, one BeatSaver flags."""
    root = tmp_path_factory.mktemp("flags")
    demo = make_demo(root / "demo", n_levels=3, duration_s=5, include_fretsonfire=False, progress=False)
    levels = demo.levels_dir
    sage = levels / "demo-01-golden-garden" / "Info.dat"
    info = json.loads(sage.read_text(encoding="utf-8"))
    info["_customData"] = {"_editors": {"_lastEditedBy": "beatsage", "beatsage": {"version": "2.0.0.flow"}}}
    sage.write_text(json.dumps(info), encoding="utf-8")
    hashes = {p.name.removesuffix(".zip"): level_hash(p) for p in levels.iterdir()}
    lines = [json.dumps({"id": "1a", "stats": {"upvotes": 90, "downvotes": 10, "score": 0.87},
                         "automapper": False, "declaredAi": "None", "ranked": True, "tags": ["pop", "dance-style"],
                         "versions": [{"hash": hashes["demo-02-electric-tide"].upper()}]}),
             "this line is not JSON",
             json.dumps({"id": "2b", "stats": {"upvotes": 3, "downvotes": 5, "score": 0.41},
                         "automapper": True, "declaredAi": "SageScore",
                         "versions": [{"hash": "0" * 40}, {"hash": hashes["demo-03-velvet-pulse"]}]})]
    meta = root / "beatsaver.jsonl"
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = root / "store"
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    report = build_targets(levels, store=store, jobs=1, progress=False, metadata=meta)
    assert report.exit_code == 0, report.summary()
    return store, hashes, meta


def test_level_attrs_hash_automap_and_metadata(flagged_store):
    store, hashes, meta = flagged_store
    t = Store(store).index("targets")
    a, b, c = (t[k].attrs for k in ("demo-01-golden-garden", "demo-02-electric-tide", "demo-03-velvet-pulse"))
    assert {k: t[k].attrs["level_hash"] for k in hashes} == hashes
    assert a["automapped"] and "beatsage" in a["automap_evidence_json"] and "bs_score" not in a
    assert not b["automapped"] and json.loads(b["automap_evidence_json"]) == []
    assert (b["bs_id"], b["bs_upvotes"], b["bs_downvotes"], b["bs_ranked"]) == ("1a", 90, 10, True)
    assert b["bs_score"] == pytest.approx(0.87) and json.loads(b["bs_tags_json"]) == ["pop", "dance-style"]
    assert c["automapped"] and c["bs_automapper"] and "SageScore" in c["automap_evidence_json"]
    m = read_metadata(meta)
    assert m.n_maps == 2 and m.bad_lines[0][0] == 2 and "not JSON" in m.warning()


def test_trainer_filters(flagged_store, tmp_path):
    store, hashes, _ = flagged_store
    t = Store(store).index("targets")
    kept, out = filter_songs(t, hashes, exclude_automapped=True)
    assert kept == {"demo-02-electric-tide"} and set(out.values()) == {"automapped"}
    kept, out = filter_songs(t, hashes, min_score=0.5)
    assert kept == {"demo-02-electric-tide"}
    assert out["demo-01-golden-garden"].startswith("no BeatSaver score") and "0.410 < 0.5" in out["demo-03-velvet-pulse"]
    assert filter_songs(t, hashes)[0] == set(hashes)
    r = CliRunner().invoke(main, ["train", "ddc", "--store", str(store), "--out", str(tmp_path / "run"),
                                  "--preset", "tiny", "--max-steps", "1", "--min-score", "0.95", "--no-progress"])
    assert r.exit_code == 1 and "filters leave no song" in r.output


def test_missing_metadata_file_stops_the_run(tmp_path):
    from mapkit.errors import MapkitError

    with pytest.raises(MapkitError, match="cannot read metadata"):
        read_metadata(tmp_path / "nope.jsonl")
    attrs = metadata_attrs({"id": 1, "stats": {"score": "n/a"}})
    assert math.isnan(attrs["bs_score"]) and attrs["bs_upvotes"] == -1 and not attrs["bs_automapper"]


def test_unreadable_difficulty_leaves_the_hash_unknown(tmp_path):
    import os
    import shutil

    from mapkit.errors import LevelError
    from mapkit.preprocess.levelhash import level_hash_and_info

    level = tmp_path / "JOURNEY"
    shutil.copytree(JOURNEY, level)
    (level / "HardStandard.dat").unlink()
    os.mkfifo(level / "HardStandard.dat")  # reading it would block: the container refuses it
    digest, info, problem = level_hash_and_info(level)
    assert digest == "" and "HardStandard.dat" in str(problem.path) and info["_songName"]
    with pytest.raises(LevelError):
        level_hash(level)
