"""mapkit stats: counts from attributes, checked against stores whose content is known."""

import json
from collections import Counter

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.datasets.store import Store
from mapkit.runs.stats import corpus_stats, reason_kind
from tests.synthetic_store import level_plan, write_synthetic_store
from tests.tiny_store import build_tiny_store

N_SYNTHETIC = 120


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats") / "store"
    plans = write_synthetic_store(root, N_SYNTHETIC, shard_levels=50)
    ids = [p["song_id"] for p in plans]
    (root / "vocab.json").write_text(json.dumps({"counted_songs": ids[:100], "val_songs": ids[100:]}))
    return root, plans


def test_counts_match_the_synthetic_levels(synthetic):
    root, plans = synthetic
    s = corpus_stats(root)
    diffs = [d for p in plans for d in p["difficulties"]]
    assert (s["n_songs"], s["n_levels"], s["n_difficulties"]) == (N_SYNTHETIC, N_SYNTHETIC, len(diffs))
    assert s["levels"]["by_format_version"] == dict(Counter(d["declared_version"] for d in diffs))
    assert s["levels"]["by_difficulty"] == {k: v for k, v in Counter(d["name"].split("/")[1] for d in diffs).items()}
    assert list(s["levels"]["by_difficulty"]) == ["Easy", "Normal", "Hard", "Expert", "ExpertPlus"]
    assert s["songs"]["by_sample_rate"] == dict(Counter(p["sample_rate"] for p in plans))
    assert s["songs"]["duration_s"]["max"] == max(p["duration_s"] for p in plans)
    assert s["tempo"]["info_bpm"]["median"] == pytest.approx(np.median([p["info_bpm"] for p in plans]))
    expected_changes = Counter(len(json.loads(d["tempo_map"])["segments"]) - 1 for d in diffs)
    assert s["tempo"]["tempo_changes_per_difficulty"] == dict(expected_changes)


def test_notes_per_second_per_difficulty(synthetic):
    root, plans = synthetic
    nps = corpus_stats(root)["density"]["notes_per_second"]
    for name in ("Easy", "ExpertPlus"):
        values = [d["n_notes"] / p["duration_s"] for p in plans for d in p["difficulties"]
                  if d["name"].endswith("/" + name)]
        assert nps[name]["median"] == pytest.approx(np.median(values))
        assert nps[name]["n"] == len(values)


def test_quarantine_audit_duplicates_and_unk(synthetic):
    root, plans = synthetic
    s = corpus_stats(root)
    diffs = [d for p in plans for d in p["difficulties"]]
    assert s["quarantine"]["quarantine_reasons"] == {"requires Noodle Extensions": sum(bool(p["quarantined"])
                                                                                       for p in plans)}
    assert s["quarantine"]["dropped_notes_by_reason"] == {"beyond_audio": sum('"beyond_audio"' in d["drops_json"]
                                                                              for d in diffs)}
    flags = Counter(f for d in diffs for f in (json.loads(d["audit_flags_json"]) or ["clean"]))
    assert s["audit"]["flags"] == dict(flags) and s["audit"]["not_audited"] == 0
    dup = s["duplicates"]
    assert dup["song_groups"] == N_SYNTHETIC // 2 and dup["groups_with_several_songs"] == N_SYNTHETIC // 2
    assert dup["automapped"] == sum(p["automapped"] for p in plans)
    assert dup["duplicate_level_copies"] == sum(1 for p in plans if p["level_hash"] == "h0") - 1
    val = [p for p in plans[100:]]
    assert s["unk"]["split_from"] == "vocab.json"
    assert s["unk"]["validation"]["unk"] == sum(d["n_unk"] for p in val for d in p["difficulties"])
    assert s["unk"]["validation"]["songs"] == len(val)


def test_the_newest_copy_of_a_level_counts_and_summaries_follow_the_shards(synthetic, tmp_path):
    import shutil

    from mapkit.datasets.store import ShardItem, ShardWriter, shard_file_attrs
    from mapkit.settings import TargetSettings

    root = tmp_path / "store"
    shutil.copytree(synthetic[0], root)
    before = corpus_stats(root)
    assert len(list((root / "cache" / "stats").glob("targets-*.json"))) == len(Store(root).shards("targets"))
    with ShardWriter(Store(root).targets_dir, shard_file_attrs("targets", TargetSettings())) as w:
        w.write(ShardItem("levels/song-00000", {"Standard/Easy/frame_class": np.zeros(1, np.uint8)},
                          {"info_version": "2.0.0", "info_bpm": 100.0, "difficulties_json": '["Standard/Easy"]',
                           "quarantined_json": "[]"},
                          subgroup_attrs={"Standard/Easy": {"declared_version": "9.9.9", "n_notes": 10}}))
    after = corpus_stats(root)
    assert after["n_levels"] == before["n_levels"]
    assert after["levels"]["by_format_version"]["9.9.9"] == 1
    assert after["audit"]["not_audited"] == 1
    # a deleted shard's summary goes with it
    first = Store(root).shards("targets")[0]
    first.unlink()
    corpus_stats(root)
    assert not (root / "cache" / "stats" / f"targets-{first.name}.json").exists()


def test_a_cached_summary_is_used_only_while_its_shard_is_unchanged(synthetic, tmp_path):
    import os
    import shutil

    root = tmp_path / "store"
    shutil.copytree(synthetic[0], root)
    corpus_stats(root)
    shard = Store(root).shards("targets")[0]
    cache = root / "cache" / "stats" / f"targets-{shard.name}.json"
    doc = json.loads(cache.read_text())
    doc["summary"]["items"]["song-00001"]["info_version"] = "forged"
    cache.write_text(json.dumps(doc))
    assert "forged" in corpus_stats(root)["levels"]["by_info_version"]
    os.utime(shard, ns=(1, 1))  # the shard changed: the summary no longer counts
    assert "forged" not in corpus_stats(root)["levels"]["by_info_version"]


def test_real_tiny_store_counts_and_reports(tmp_path):
    store = build_tiny_store(tmp_path, n_levels=2, duration_s=6.0)
    s = corpus_stats(store, png=tmp_path / "sheet.png")
    targets = Store(store).index("targets")
    n_notes, versions = 0, Counter()
    for e in targets.values():
        with h5py.File(e.shard, "r") as f:
            for name in json.loads(e.attrs["difficulties_json"]):
                n_notes += int((f[e.group][name]["notes"]["color"] != 3).sum())
                versions[f[e.group][name].attrs["declared_version"]] += 1
    assert s["levels"]["by_format_version"] == dict(versions) and len(versions) == 2  # demo levels 1-2: v2, v3
    assert s["density"]["notes_kept"]["mean"] * s["n_difficulties"] == pytest.approx(n_notes)
    assert s["audit"]["not_audited"] == s["n_difficulties"]
    assert s["quarantine"]["newest_reports"]["build-targets"]["failed"] == {}
    assert (tmp_path / "sheet.png").read_bytes()[:4] == b"\x89PNG"


def test_reason_kinds_group_numbers_and_files():
    assert reason_kind("dropped 12 of 300 notes (4.0% > 5%)") == reason_kind("dropped 7 of 90 notes (7.8% > 5%)")
    assert reason_kind("unreadable: /x/y/Expert.dat: bad JSON at line 3") == "unreadable"


def test_cli_stats_json_png_and_no_store(synthetic, tmp_path):
    root = synthetic[0]
    result = CliRunner().invoke(main, ["stats", "--store", str(root), "--json", "--png", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["n_levels"] == N_SYNTHETIC and doc["png"] == str(tmp_path / "s.png")
    assert json.loads(open(doc["report"]).read())["n_levels"] == N_SYNTHETIC
    result = CliRunner().invoke(main, ["stats", "--store", str(root)])
    assert result.exit_code == 0 and "levels/s" in result.stdout and "UNK share (vocab.json)" in result.stdout
    result = CliRunner().invoke(main, ["stats", "--store", str(tmp_path / "none")])
    assert result.exit_code == 1 and "no store" in result.output


def test_the_synthetic_plan_is_deterministic():
    assert level_plan(7) == level_plan(7)
