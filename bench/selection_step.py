"""Stage-2 training step on CPU: time and peak memory with and without attention dropout.

PyTorch's CPU ``scaled_dot_product_attention`` has a fused (flash) kernel
only for ``dropout_p == 0``; any attention dropout sends it to the math path,
which materialises every ``[T, T]`` attention matrix (and its dropout mask)
per head and layer. This script measures one training step (forward, label-
smoothed loss, backward, AdamW update) of a :class:`~mapkit.train.models.SelectionModel`
on random sources and tokens, once per ``--attention-dropout`` value, each in
a fresh child process, so that its peak resident memory is its own. Residual
and feed-forward dropout stay at ``--dropout``. Times are CPU seconds
(``time.process_time``) per step after ``--warmup`` untimed steps; set
``OMP_NUM_THREADS`` for the thread count (the figures in the README use 1).

    OMP_NUM_THREADS=1 python bench/selection_step.py                       # default model, 1 x 1024 tokens
    OMP_NUM_THREADS=1 python bench/selection_step.py --batch 4 --tokens 512 --attention-dropout 0 0.1 --json
    OMP_NUM_THREADS=1 python bench/selection_step.py --d-model 128 --layers 2 --heads 4 --d-ff 512 --batch 8 --tokens 512

Exit codes: 0 ok, 1 a child failed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one_run(args) -> dict:
    """Train ``args.warmup + args.steps`` steps in this process; CPU seconds per timed step and peak RSS."""
    from dataclasses import replace

    import torch

    from mapkit.train.models import SELECTION_PRESETS, SelectionModel, selection_loss

    torch.manual_seed(0)
    sizes = {k: v for k, v in (("d_model", args.d_model), ("n_encoder_layers", args.layers),
                               ("n_decoder_layers", args.layers), ("n_heads", args.heads), ("d_ff", args.d_ff))
             if v is not None}
    config = replace(SELECTION_PRESETS[args.preset], attention_dropout=args.attention_dropout[0],
                     dropout=args.dropout, **sizes)
    model = SelectionModel(config).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    src = torch.randn(args.batch, args.tokens, config.src_dim)
    tokens = torch.randint(4, config.vocab_size, (args.batch, args.tokens))
    mask = torch.ones(args.batch, args.tokens, dtype=torch.bool)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.process_time()
        logits = model(src, mask, tokens[:, :-1], mask[:, :-1])
        loss = selection_loss(logits, tokens[:, 1:], config.label_smoothing)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step >= args.warmup:
            times.append(time.process_time() - t0)
    return {"attention_dropout": args.attention_dropout[0], "dropout": args.dropout, "preset": args.preset,
            "d_model": config.d_model, "layers": config.n_encoder_layers, "batch": args.batch, "tokens": args.tokens, "threads": torch.get_num_threads(),
            "cpu_s_per_step": sum(times) / len(times), "peak_rss_mb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=("default", "tiny"), help="model (default: default)")
    parser.add_argument("--d-model", type=int, help="resize the preset: model width")
    parser.add_argument("--layers", type=int, help="resize the preset: encoder and decoder layers each")
    parser.add_argument("--heads", type=int, help="resize the preset: attention heads")
    parser.add_argument("--d-ff", type=int, help="resize the preset: feed-forward width")
    parser.add_argument("--batch", type=int, default=1, help="levels per step (default 1)")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per level, the crop (default 1024)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--dropout", type=float, default=0.1, help="residual/feed-forward dropout (default 0.1)")
    parser.add_argument("--attention-dropout", type=float, nargs="+", default=[0.1, 0.0],
                        help="attention dropout values, one child process each (default: 0.1 0.0)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object per value")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_run(args)))
        return 0
    rows = []
    for p in args.attention_dropout:
        cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--batch", str(args.batch),
               "--tokens", str(args.tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--dropout", str(args.dropout), "--attention-dropout", str(p)]
        for name in ("d_model", "layers", "heads", "d_ff"):
            if getattr(args, name) is not None:
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"error: attention dropout {p}: {done.stderr.strip()[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"attention dropout {r['attention_dropout']:<4g} dropout {r['dropout']:<4g} {r['preset']} "
                  f"(d {r['d_model']}, {r['layers']}+{r['layers']} layers) "
                  f"{r['batch']} x {r['tokens']} tokens, {r['threads']} thread(s): "
                  f"{r['cpu_s_per_step']:.2f} CPU s/step, peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
