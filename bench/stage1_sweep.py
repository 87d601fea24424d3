"""Stage-1 experiments: train one variant of ``mapkit train ddc`` with config overrides, report its curve.

Each variant is the default preset with the given :class:`~mapkit.train.ddc.DDCConfig`
fields (``--set name=value``, values parsed as JSON) and model fields
(``--model name=value``), trained with a fixed step budget so variants compare at
equal cost. The validation curve (``metrics.jsonl``) and the CPU seconds are printed
as one JSON object, and written to ``OUT/sweep.json``.

    python bench/stage1_sweep.py --store data --out runs/base --steps 600
    python bench/stage1_sweep.py --store data --out runs/wide --steps 600 --set widen_frames=1
    python bench/stage1_sweep.py --store data --out runs/bi --steps 600 --model bidirectional=true
    python bench/stage1_sweep.py --store data --out runs/long --steps 600 --set window=400 --set batch_size=8

Exit codes: 0 ok, 1 could not proceed (bad override, unreadable store).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
from pathlib import Path


def _pairs(items) -> dict:
    out = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
        if isinstance(out[name], list):
            out[name] = tuple(out[name])
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True, help="run folder (overwritten)")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between validations (default 200)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of songs (default 0.2)")
    parser.add_argument("--set", action="append", help="DDCConfig field=JSON value (repeatable)")
    parser.add_argument("--model", action="append", help="PlacementConfig field=JSON value (repeatable)")
    args = parser.parse_args(argv)

    from mapkit.train.ddc import ddc_config, train_ddc
    from mapkit.train.loop import RunOptions
    from mapkit.train.models import PLACEMENT_PRESETS

    try:
        model = dataclasses.replace(PLACEMENT_PRESETS["default"], **_pairs(args.model))
        config = ddc_config("default", model=model, max_steps=args.steps, eval_every=args.eval_every,
                            warmup_steps=args.warmup, val_fraction=args.val_fraction,
                            checkpoint_every=args.steps, **_pairs(args.set))
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    before = _cpu_seconds()
    result = train_ddc(args.store, args.out, config, RunOptions(device="cpu", progress=False, overwrite=True))
    curve = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    report = {"overrides": {"config": _pairs(args.set), "model": _pairs(args.model)}, "steps": result.step,
              "cpu_s": round(_cpu_seconds() - before, 1),
              "val": [r for r in curve if r.get("split") == "val"]}
    Path(args.out, "sweep.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
