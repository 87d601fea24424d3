"""mapkit generate: the default stage-2 sampling depends on the difficulty; explicit options override it."""

import numpy as np
import pytest
from click.testing import CliRunner

from mapkit.cli import main
from mapkit.preprocess.difficulties import DIFFICULTIES
from mapkit.runs.generate import (BY_DIFFICULTY, DEFAULT_TEMPERATURE, SAMPLING_BY_DIFFICULTY, generate_level,
                                  sampling_for)
from tests.runs.test_generate import _save, song, tiny_models  # noqa: F401  (song is a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_difficulty_has_its_sampling_and_easy_a_narrower_nucleus_than_expert_plus():
    assert set(SAMPLING_BY_DIFFICULTY) == set(DIFFICULTIES)
    assert all(t > 0 and 0 < p <= 1 for t, p in SAMPLING_BY_DIFFICULTY.values())
    assert SAMPLING_BY_DIFFICULTY["Easy"][1] < SAMPLING_BY_DIFFICULTY["ExpertPlus"][1]
    assert sampling_for("Easy") == SAMPLING_BY_DIFFICULTY["Easy"]
    assert sampling_for("Easy", top_p=None) == (SAMPLING_BY_DIFFICULTY["Easy"][0], None)  # None: no cut
    assert sampling_for("Expert", temperature=0.5, top_p=BY_DIFFICULTY) == (0.5, SAMPLING_BY_DIFFICULTY["Expert"][1])


def test_the_difficulty_default_is_what_stage_2_samples_with(song, tmp_path):  # noqa: F811
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    # a hot temperature: the tiny model's peaky outputs get nuclei that differ between the table's top-p values
    kw = dict(out_dir=tmp_path, seed=0, temperature=4.0)
    easy_p, top_p = SAMPLING_BY_DIFFICULTY["Easy"][1], SAMPLING_BY_DIFFICULTY["ExpertPlus"][1]
    default = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt,
                             difficulty=["Easy", "ExpertPlus"], name="default", **kw)
    easy, expert_plus = default.charts
    assert easy.decoding == f"T 4, top-p {easy_p:g}" and expert_plus.decoding == f"T 4, top-p {top_p:g}"
    # the same draw as asking for the table's value explicitly ...
    explicit = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, difficulty="Easy",
                              top_p=easy_p, name="explicit", **kw)
    assert np.array_equal(explicit.notes, easy.notes)
    # ... and not the draw of Expert+'s nucleus or of no cut: the value applied is Easy's
    for other, name in ((top_p, "wide"), (None, "uncut")):
        wide = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, difficulty="Easy",
                              top_p=other, name=name, **kw)
        assert np.array_equal(np.unique(wide.notes["time_s"]), np.unique(easy.notes["time_s"]))  # same stage 1
        assert not np.array_equal(wide.notes, easy.notes), name


def test_cli_keeps_the_table_unless_an_option_is_given(song, tmp_path):  # noqa: F811
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    p = _save(tmp_path / "ddc" / "last.pt", placement, "placement", p_ckpt)
    s = _save(tmp_path / "transformer" / "last.pt", selection, "selection", s_ckpt)
    base = ["generate", str(song / "clicks.ogg"), "--placement", str(p), "--selection", str(s),
            "--difficulty", "Easy", "--difficulty", "Expert"]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    for d in ("Easy", "Expert"):
        t, top = SAMPLING_BY_DIFFICULTY[d]
        assert f"{d}: " in r.output and f"stage 2: T {t:g}, top-p {top:g}" in r.output.split(f"{d}: ")[1].split("\n")[0]
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "b"), "--top-p", "0.93", "--temperature", "1.2"])
    assert r.exit_code == 0, r.output
    assert r.output.count("stage 2: T 1.2, top-p 0.93") == 2
    assert DEFAULT_TEMPERATURE == 1.0


def _cycling(k: int, n: int = 120):
    """``n`` note times 0.25 s apart cycling through ``k`` distinct one-note layouts: k distinct states."""
    from mapkit.preprocess.notes import NOTE_DTYPE

    notes = np.zeros(n, NOTE_DTYPE)
    notes["time_s"] = 0.5 + 0.25 * np.arange(n)
    notes["beat"] = notes["time_s"] * 2
    cell = np.arange(n) % k
    notes["column"], notes["row"], notes["direction"] = cell % 4, (cell // 4) % 3, (cell // 12) % 9
    notes["color"] = np.arange(n) % 2
    return notes


def test_the_default_top_p_moves_into_the_variety_band_one_way_and_not_past_it():
    from mapkit.runs.generate import VARIETY_STEP, _varied_states

    tried = []

    def decode(p):  # a level with more distinct layouts the wider the nucleus: round(40 p)
        tried.append(p)
        return _cycling(int(round(40 * p))), 0.0, 0

    wide = {"distinct_states": [29.5, 30.5], "top_state_share": [0.0, 1.0]}
    (notes, _, _), p = _varied_states(decode, 0.7, wide, "Expert", 31.0)  # 28 layouts: too few -> 0.75 (30)
    assert tried == [0.7, 0.7 + VARIETY_STEP] and p == 0.75 and len(np.unique(notes["column"] + 4 * notes["row"]
                                                                              + 12 * notes["direction"])) == 30
    tried.clear()
    (_, _, _), p = _varied_states(decode, 0.7, {"distinct_states": [5, 10]}, "Expert", 31.0)  # too many, 2 steps
    assert tried == [0.7, 0.65, 0.6] and p == 0.6
    tried.clear()
    (_, _, _), p = _varied_states(decode, 0.7, {"distinct_states": [29, 29]}, "Expert", 31.0)  # 30 overshoots
    assert tried == [0.7, 0.75] and p == 0.7
    tried.clear()
    # an overshoot keeps the draw nearer the band: 0.75's 30 layouts lie 0.5 above it, 0.7's 28 lie 1.5 below
    (_, _, _), p = _varied_states(decode, 0.7, {"distinct_states": [29.5, 29.5]}, "Expert", 31.0)
    assert tried == [0.7, 0.75] and p == 0.75
    tried.clear()
    assert _varied_states(decode, 0.7, None, "Expert", 31.0)[1] == 0.7 and tried == [0.7]  # no band: one draw


def test_generate_moves_only_the_default_top_p_and_says_so(song, tmp_path):  # noqa: F811
    from mapkit.preprocess.object_decoding import ObjectPriors

    placement, selection, p_ckpt, s_ckpt = tiny_models()
    # a band no 6-second level reaches (at least 500 distinct layouts): the default widens twice, no further
    priors = ObjectPriors({"Easy": {"variety": {"distinct_states": [500.0, 900.0]}}})
    kw = dict(out_dir=tmp_path, seed=0, temperature=4.0, difficulty="Easy", object_priors=priors)
    easy_p = SAMPLING_BY_DIFFICULTY["Easy"][1]
    moved = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, name="moved", **kw)
    wider = round(easy_p + 0.1, 6)
    assert moved.charts[0].decoding == f"T 4, top-p {wider:g} (table {easy_p:g}, moved into the variety band)"
    same = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, name="same", top_p=wider,
                          **{k: v for k, v in kw.items() if k != "object_priors"})
    assert np.array_equal(same.notes, moved.notes)  # the draw at the moved top-p
    given = generate_level(song / "clicks.ogg", placement, selection, p_ckpt, s_ckpt, name="given", top_p=easy_p,
                           **kw)
    assert given.charts[0].decoding == f"T 4, top-p {easy_p:g}"  # an explicit top-p is used as given
