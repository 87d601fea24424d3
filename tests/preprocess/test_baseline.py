import math

import numpy as np
import pytest

from mapkit.preprocess.baseline import Baseline, outside_band, percentile_rank, percentile_table


def test_the_median_of_the_baseline_is_the_50th_percentile():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 3.0, size=501)
    table = percentile_table(values)
    assert percentile_rank(float(np.median(values)), table) == pytest.approx(50.0)
    assert percentile_rank(float(values.min()) - 1, table) == 0.0
    assert percentile_rank(float(values.max()) + 1, table) == 100.0
    assert outside_band(percentile_rank(float(np.percentile(values, 2)), table))
    assert not outside_band(percentile_rank(float(np.percentile(values, 50)), table))


def test_ties_sit_in_the_middle_of_their_run_and_nan_is_never_flagged():
    table = percentile_table([0] * 60 + list(range(1, 41)))
    assert 25 < percentile_rank(0.0, table) < 35
    assert math.isnan(percentile_rank(math.nan, table)) and not outside_band(math.nan)
    assert percentile_table([math.nan, None]) is None


def test_baseline_json_round_trip_and_ranks():
    records = [("Expert", {"nps_mean": float(v), "only_some": math.nan}) for v in range(1, 100)]
    b = Baseline.from_values(records, settings_hash="abc", source="store")
    assert b.counts == {"Expert": 99} and "only_some" not in b.tables["Expert"]
    again = Baseline.from_json(b.to_json())
    assert again.ranks("Expert", {"nps_mean": 50.0, "other": 1.0}) == {"nps_mean": 50.0}
    assert again.ranks("Hard", {"nps_mean": 50.0}) == {}
    with pytest.raises(ValueError, match="not a mapkit baseline"):
        Baseline.from_json({"format": 99})


def test_a_short_level_whose_counts_read_low_is_warned_about_and_no_other():
    records = [("Expert", {"duration_s": float(d), "distinct_states": float(d), "notes": 4.0 * d, "nps_mean": 4.0})
               for d in range(100, 300)]
    b = Baseline.from_values(records, settings_hash="h")

    def warning(**values):
        return b.short_level_warning("Expert", b.ranks("Expert", values))

    short = warning(duration_s=21.0, distinct_states=30.0, notes=600.0, nps_mean=4.0)
    assert short.startswith("distinct_states below the human band: a count over the whole level")
    assert "notes" not in short.split(":")[0]  # notes are in band: only the low count is named
    assert warning(duration_s=21.0, distinct_states=30.0, notes=84.0).startswith("notes, distinct_states below")
    assert warning(duration_s=200.0, distinct_states=30.0) is None  # a whole song with few states: no excuse
    assert warning(duration_s=21.0, distinct_states=150.0) is None  # short, but its counts are in band
    assert b.short_level_warning("Hard", b.ranks("Hard", {"duration_s": 0.0, "distinct_states": 0.0})) is None
