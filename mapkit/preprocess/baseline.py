"""Human baselines: per-difficulty percentiles of every metric, and where a value falls among them.

A baseline holds, per difficulty and metric, the 101 percentiles (0, 1, ...,
100; numpy's linear interpolation) of that metric over a set of human
levels, NaN values left out. :func:`percentile_rank` places a value among
them: the inverse of the piecewise-linear quantile function, with ties
(a run of equal percentiles, e.g. many levels with 0 parity errors) placed
at the middle of the run, so the median of the baseline is at 50 and a value
is flagged only when it lies outside the human ``[5, 95]`` band. Pure
functions; reading and writing the JSON file is :mod:`mapkit.runs.evaluate`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: The percentiles a baseline stores for each metric.
PERCENTILES = np.arange(101, dtype=np.float64)
#: Values whose human percentile lies outside this band are flagged.
BAND = (5.0, 95.0)
BASELINE_FORMAT = 1


def percentile_table(values) -> list[float] | None:
    """The 101 percentiles (0..100) of the finite ``values``, or None when there are none."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not x.size:
        return None
    return [float(q) for q in np.percentile(x, PERCENTILES)]


def percentile_rank(value: float, table) -> float:
    """Human percentile (0-100) of ``value`` within a percentile ``table`` (see the module docstring).

    Below the minimum gives 0, above the maximum 100; NaN for a NaN value or no table.

    >>> percentile_rank(5.0, list(range(0, 101)))
    5.0
    >>> percentile_rank(0.0, [0.0] * 61 + list(range(1, 41)))   # 0 is the value of percentiles 0..60
    30.0
    """
    if table is None or value is None or not math.isfinite(value):
        return math.nan
    q = np.asarray(table, dtype=np.float64)
    lo = int(np.searchsorted(q, value, side="left"))
    hi = int(np.searchsorted(q, value, side="right"))
    if hi > lo:  # value equals a run of percentiles: the middle of the run
        return float(PERCENTILES[lo:hi].mean())
    if lo == 0:
        return 0.0
    if lo == len(q):
        return 100.0
    q0, q1 = q[lo - 1], q[lo]
    return float(PERCENTILES[lo - 1] + (value - q0) / (q1 - q0) * (PERCENTILES[lo] - PERCENTILES[lo - 1]))


def outside_band(rank: float, band=BAND) -> bool:
    """Whether a percentile rank lies outside the human band (NaN is never flagged)."""
    return math.isfinite(rank) and (rank < band[0] or rank > band[1])


@dataclass
class Baseline:
    """Percentile tables per difficulty: ``tables[difficulty][metric]`` (101 floats), ``counts[difficulty]``
    the number of levels, ``settings_hash`` the :class:`~mapkit.preprocess.quality.EvaluateSettings` used."""

    tables: dict
    counts: dict
    settings_hash: str
    source: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_values(cls, records, settings_hash: str, source: str = "") -> "Baseline":
        """Build from ``(difficulty, {metric: value})`` records (one per human level difficulty)."""
        by_diff: dict = {}
        for difficulty, values in records:
            by_diff.setdefault(difficulty, []).append(values)
        tables, counts = {}, {}
        for difficulty, rows in by_diff.items():
            names = sorted({k for r in rows for k in r})
            tables[difficulty] = {k: t for k in names if (t := percentile_table(r.get(k) for r in rows)) is not None}
            counts[difficulty] = len(rows)
        return cls(tables, counts, settings_hash, source)

    def ranks(self, difficulty: str, values: dict) -> dict:
        """``{metric: human percentile}`` of ``values`` for the metrics this baseline has for ``difficulty``."""
        tables = self.tables.get(difficulty, {})
        return {k: percentile_rank(v, tables[k]) for k, v in values.items() if k in tables}

    def short_level_warning(self, difficulty: str, ranks: dict) -> str | None:
        """Why a level's counts read low, or None: it is shorter than the human band and counts
        (:data:`~mapkit.preprocess.quality.COUNT_METRICS`) fall below the band.

        ``ranks`` are the level's human percentiles (:meth:`ranks`).

        Examples
        --------
        >>> b = Baseline.from_values([("Expert", {"duration_s": d, "distinct_states": d}) for d in range(60, 260)], "h")
        >>> b.short_level_warning("Expert", b.ranks("Expert", {"duration_s": 21.0, "distinct_states": 30}))
        'distinct_states below the human band: a count over the whole level, and the level is shorter than the human band (duration_s at percentile 0)'
        """
        from mapkit.preprocess.quality import COUNT_METRICS

        length = ranks.get("duration_s", math.nan)
        low = [k for k in COUNT_METRICS if ranks.get(k, math.nan) < BAND[0]]
        if not (length < BAND[0] and low):
            return None
        what = "a count" if len(low) == 1 else "counts"
        return (f"{', '.join(low)} below the human band: {what} over the whole level, and the level is shorter "
                f"than the human band (duration_s at percentile {length:.0f})")

    def to_json(self) -> dict:
        return {"format": BASELINE_FORMAT, "percentiles": PERCENTILES.tolist(), "band": list(BAND),
                "settings_hash": self.settings_hash, "source": self.source, **self.extra,
                "difficulties": {d: {"n_levels": self.counts[d], "metrics": self.tables[d]} for d in self.tables}}

    @classmethod
    def from_json(cls, doc: dict) -> "Baseline":
        """Parse a baseline document; ValueError saying what is wrong."""
        if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
            raise ValueError(f"not a mapkit baseline (format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                             f"expected {BASELINE_FORMAT})")
        if doc.get("percentiles") != PERCENTILES.tolist():
            raise ValueError("its percentiles are not 0, 1, ..., 100")
        tables, counts = {}, {}
        for d, entry in (doc.get("difficulties") or {}).items():
            metrics = entry.get("metrics", {})
            for k, t in metrics.items():
                if not isinstance(t, list) or len(t) != len(PERCENTILES):
                    raise ValueError(f"{d}/{k}: expected {len(PERCENTILES)} percentiles")
            tables[d], counts[d] = metrics, int(entry.get("n_levels", 0))
        return cls(tables, counts, str(doc.get("settings_hash", "")), str(doc.get("source", "")))
