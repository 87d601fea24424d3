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
