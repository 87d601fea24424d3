"""bench/generate.py --notes-only: the stage-2 cost per note time, said for which model."""

import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_notes_only_prints_the_cost_per_note_time_of_both_decodings():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), "--notes-only", "--preset", "tiny",
                          "--notes", "40", "--vocab-size", "300"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("stage 2 per note time:") and "M parameters" in line for line in lines)
    for n in (40,):
        line = next(line for line in lines if line.startswith(f"stage 2, {n:5d} note times"))
        beam, sampled = (float(line.split(key)[1].split()[0]) for key in ("beam 8 ", "sampling) "))
        assert math.isfinite(beam) and beam > 0 and math.isfinite(sampled) and sampled > 0
    assert "song:" not in out.stdout  # no level generated
