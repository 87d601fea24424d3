"""The training loop shared by both stages: devices, DDP, schedule, checkpoints, logs.

One function, :func:`fit`, runs a :class:`Stage` (``mapkit.train.ddc`` or
``mapkit.train.transformer``), which provides the model, the datasets, the
loss of a batch and the validation metrics. Everything else lives here:

- **device**: ``"auto"`` is CUDA when present (with automatic mixed
  precision: bfloat16 where supported, else float16 with a gradient scaler),
  else CPU in float32;
- **DDP**: under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the model is
  wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (NCCL on
  CUDA, gloo on CPU) and each rank reads its own share of every epoch
  (:class:`EpochSampler`); validation, logs and checkpoints happen on rank 0;
- **schedule**: AdamW, linear warm-up then cosine decay to ``min_lr_ratio``,
  gradient clipping by global norm;
- **checkpoints** (``last.pt`` every ``checkpoint_every`` steps and at the
  end, ``best.pt`` at the best validation metric), written through a
  temporary file and a rename, hold model, optimiser, scheduler, scaler,
  step, position in the epoch, RNG states of every rank, configs, the
  store's settings/vocabulary hashes and the normalisation statistics;
- **resume**: continues from ``last.pt`` exactly where it stopped (on CPU
  bit for bit: the data order is a pure function of ``(seed, epoch)``, item
  randomness of ``(seed, epoch, index)``, and the RNG states are restored);
  refused when the store's hashes or the training config differ;
- **logs**: ``metrics.jsonl`` (one JSON object per log or validation event,
  and, when a run finishes, the stage's :meth:`Stage.final_records`: for
  stage 2 the audio ablation), a tqdm bar with the loss, and ``curves.png``
  (matplotlib, Agg) at the end: the training loss and every validation
  metric, the step of ``best.pt`` marked;
- **validation cadence**: ``eval_every`` None (the default) validates
  :data:`EVAL_POINTS` times per run, evenly spaced (and at the end);
- **the run folder**: a fresh run refuses a folder that already holds files
  (``best.pt`` of an earlier run would be lost) unless ``overwrite``
  (:func:`prepare_run_folder`); temporary checkpoint files of a run killed
  while saving are removed at the next start;
- **signals**: SIGINT (Ctrl-C) or SIGTERM finish the step in progress, save
  ``last.pt`` and stop (:attr:`TrainResult.interrupted`); a second one stops
  at once.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import json
import math
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import mapkit
from mapkit.datasets.split import grouping_record
from mapkit.datasets.store import Store
from mapkit.errors import StoreError, TrainingError
from mapkit.settings import Settings

CHECKPOINT_FORMAT = "mapkit-checkpoint"
CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
METRICS_FILE, PLOT_FILE = "metrics.jsonl", "curves.png"
#: Config fields that may change when resuming (a run can be extended, its logging changed).
RESUMABLE_CHANGES = frozenset({"max_steps", "epochs", "checkpoint_every", "eval_every", "log_every"})
#: Validations per run when ``eval_every`` is None (evenly spaced; the curves get this many points).
EVAL_POINTS = 20
#: Validation keys that are not metrics (not plotted): counts and chosen settings.
NOT_METRICS = frozenset({"step", "epoch", "time", "elapsed_s", "cpu_s", "tokens", "threshold"})
#: Environment variable and default (minutes) of the DDP collective timeout (:func:`dist_timeout`).
DIST_TIMEOUT_ENV, DEFAULT_DIST_TIMEOUT_MIN = "MAPKIT_DIST_TIMEOUT_MIN", 120.0


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class TrainConfig(Settings):
    """What both stages share. Stage configs extend it with their model and data fields.

    ``max_steps`` and ``epochs``: training stops at whichever comes first
    (None = no limit from that one; at least one must be set).
    ``val_songs`` (explicit validation songs) overrides ``val_fraction``.
    ``eval_every`` None: :data:`EVAL_POINTS` validations per run (:func:`eval_interval`).
    ``min_score``/``exclude_automapped`` leave levels out before the split
    (:mod:`mapkit.datasets.filters`; None = no filter).
    """

    KIND = "train"

    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    max_steps: int | None = None
    epochs: int | None = 20
    seed: int = 0
    val_fraction: float = 0.1
    val_songs: tuple | None = None
    characteristic: str = "Standard"
    difficulties: tuple | None = None
    exclude_flagged: bool = False  # leave out difficulties flagged by mapkit audit
    min_score: float | None = None
    exclude_automapped: bool | None = None
    checkpoint_every: int = 1000
    eval_every: int | None = None
    log_every: int = 50

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps or epochs (or both)")
        for name in ("batch_size", "checkpoint_every", "eval_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1 or self.epochs is not None and self.epochs < 1:
            raise ValueError("max_steps and epochs must be >= 1")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild a config, including a nested model config (field ``model``)."""
        d = dict(d)
        model_field = {f.name: f for f in dataclasses.fields(cls)}.get("model")
        model = d.pop("model", None)
        obj = super().from_dict(d)
        if model is not None and model_field is not None:
            obj = dataclasses.replace(obj, model=type(obj.model).from_dict(model))
        return obj


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what to learn: none of it changes the result on one CPU, so none is hashed.

    ``device``: "auto", "cpu", "cuda", "cuda:1"...; ``amp``: "auto" (on with
    CUDA), "off", "bf16" or "fp16"; ``num_workers``: DataLoader worker
    processes; ``resume``: continue from ``OUT/last.pt``; ``stop_at``: stop
    (validating and checkpointing) after this global step, as an interrupted
    run would, while the schedule still follows ``max_steps``/``epochs``, so
    a long run can be done in slices with ``resume``; ``overwrite``: start
    afresh in an ``out_dir`` that holds an earlier run (its files are deleted);
    ``recompute``: keep only each transformer layer's input in the forward
    pass and recompute the rest in the backward pass (activation
    checkpointing, :func:`recompute_layers`): the same gradients for about a
    third more compute, and a fraction of the memory (README, Performance).
    """

    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0
    resume: bool = False
    progress: bool = True
    stop_at: int | None = None
    overwrite: bool = False
    recompute: bool = True


def recompute_layers(model: torch.nn.Module) -> int:
    """Make every encoder and decoder layer of ``model`` recompute its activations in the backward pass.

    Each layer's forward runs under ``torch.utils.checkpoint`` while training
    with gradients (the random state is restored, so dropout draws the same
    masks again and the gradients are those without it); in eval mode or
    without gradients it runs as before. Returns the number of layers
    wrapped (0 for a model without transformer layers, e.g. the C-LSTM).
    """
    from torch.utils.checkpoint import checkpoint

    from mapkit.train.models import DecoderLayer, EncoderLayer

    layers = [m for m in model.modules() if isinstance(m, (EncoderLayer, DecoderLayer))]
    for layer in layers:
        def forward(*args, _layer=layer, _forward=layer.forward, **kwargs):
            if _layer.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = forward
    return len(layers)


# --------------------------------------------------------------------------- devices and DDP


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly one-process) training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", dist: DistInfo = DistInfo()) -> torch.device:
    """``"auto"``: ``cuda:<local rank>`` when CUDA is available, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(name, "CUDA was asked for but is not available")
        if device.index is None:
            device = torch.device(f"cuda:{dist.local_rank}")
    return device


def amp_dtype(amp: str, device: torch.device):
    """The autocast dtype of ``amp`` on ``device``, or None for float32."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if amp in ("fp16", "auto"):
        return torch.float16
    raise ValueError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")


def dist_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective: ``MAPKIT_DIST_TIMEOUT_MIN`` minutes, default 120.

    Rank 0 validates (a whole-song pass over the validation split) while the
    other ranks wait in the next collective; torch's defaults (10 min for
    NCCL, 30 for gloo) would kill a long validation, so the default is
    generous. A hung rank is still noticed, after this long.
    """
    text = os.environ.get(DIST_TIMEOUT_ENV, "")
    try:
        minutes = float(text) if text else DEFAULT_DIST_TIMEOUT_MIN
    except ValueError:
        raise ValueError(f"{DIST_TIMEOUT_ENV} must be a number of minutes, got {text!r}") from None
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"{DIST_TIMEOUT_ENV} must be > 0 minutes, got {text!r}")
    return datetime.timedelta(minutes=minutes)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun`` (env ``WORLD_SIZE`` > 1); else one process.

    The group's collective timeout is :func:`dist_timeout` (2 hours unless
    ``MAPKIT_DIST_TIMEOUT_MIN`` says otherwise).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu" and not device_name.startswith("cpu")
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=dist_timeout())
    return info


def _leave_distributed(dist_info: DistInfo) -> None:
    """Wait for every rank, then leave the process group. A rank that exits while another still holds the
    group can abort in gloo's threads ("terminate called without an active exception", SIGABRT), which
    fails the whole torchrun job after a run that succeeded."""
    if dist_info.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _barrier(dist_info: DistInfo):
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()


def _all_gather_object(obj, dist_info: DistInfo) -> list:
    if not dist_info.active:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- data order


class EpochSampler(torch.utils.data.Sampler):
    """This rank's indices of one epoch: a permutation fixed by ``(seed, epoch)``.

    The permutation (or ``0..n-1`` without shuffling) is padded by wrapping
    to a multiple of ``world_size`` and dealt round-robin, so every rank gets
    the same number of items and no two ranks share one (beyond the padding).
    ``skip`` items at the start of this rank's share are left out: a run
    resumed mid-epoch continues with exactly the batches it had not seen.

    Parameters
    ----------
    n : int
        Dataset length.
    seed : int
    shuffle : bool
    rank, world_size : int
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0):
        self.epoch, self.skip = int(epoch), int(skip)

    @property
    def per_rank(self) -> int:
        """Items of one rank in a whole epoch."""
        return -(-self.n // self.world_size) if self.n else 0

    def indices(self) -> list:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = (order * (total // max(self.n, 1) + 1))[:total]
        return order[self.rank::self.world_size][self.skip:]

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)


def eval_interval(eval_every: int | None, total_steps: int, points: int = EVAL_POINTS) -> int:
    """Steps between validations: ``eval_every``, or when None ``ceil(total_steps / points)``.

    >>> eval_interval(None, 300), eval_interval(None, 10), eval_interval(50, 300)
    (15, 1, 50)
    """
    if eval_every is not None:
        return int(eval_every)
    return max(1, -(-int(total_steps) // int(points)))


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine from 1 down to ``min_ratio``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- store fingerprint


def store_fingerprint(store: Store, need_vocab: bool) -> dict:
    """The settings and vocabulary hashes a model trained on ``store`` depends on.

    Returns ``{"feature_settings_hash", "feature_settings_json",
    "target_settings_hash", "vocab_hash"}``. Raises :class:`StoreError` when
    the store mixes settings, has no features or targets, or its
    ``stats.json`` was made from other features.
    """
    features, targets = store.index("features"), store.index("targets")
    out = {}
    for kind, index in (("feature", features), ("target", targets)):
        hashes = sorted(index.settings_hashes)
        if not hashes:
            raise StoreError(store.root, f"the store has no {kind}s: run mapkit "
                                         f"{'extract' if kind == 'feature' else 'build-targets'} first")
        if len(hashes) > 1:
            raise StoreError(store.root, f"the store mixes {kind} settings {hashes}")
        out[f"{kind}_settings_hash"] = hashes[0]
    out["feature_settings_json"] = str(next(iter(features.values())).file_attrs.get("settings_json", ""))
    stats = store.read_stats()
    if stats.get("settings_hash") != out["feature_settings_hash"]:
        raise StoreError(store.stats_path, f"stats.json is for feature settings {stats.get('settings_hash')}, "
                                           f"the features have {out['feature_settings_hash']}; run mapkit extract")
    out["vocab_hash"] = None
    document = store.read_vocab_json(missing_ok=not need_vocab)
    if document is not None:
        try:
            out["vocab_hash"] = document["hash"]
        except (KeyError, TypeError) as e:
            raise StoreError(store.vocab_path, f"unreadable vocabulary: {e}") from None
    return out


def warn_vocabulary_leak(store: Store, val_songs, groups=None) -> str | None:
    """Warn on stderr when ``vocab.json`` was counted over some of ``val_songs`` or their groups; return the warning."""
    import sys

    from mapkit.datasets.vocab import vocabulary_leak

    message = vocabulary_leak(store.read_vocab_json(), val_songs, groups=groups)
    if message:
        print(f"warning: {message}", file=sys.stderr)
    return message


def check_fingerprint(checkpoint: dict, fingerprint: dict, path, need_vocab: bool = True):
    """Refuse (``TrainingError``) when the checkpoint's store hashes differ from ``fingerprint``'s.

    The vocabulary hash is compared only when ``need_vocab`` (stage 2):
    stage 1 never reads the vocabulary, so a rebuilt ``vocab.json`` does
    not stop it from resuming.
    """
    keys = ("feature_settings_hash", "target_settings_hash") + (("vocab_hash",) if need_vocab else ())
    bad = [f"{k} {checkpoint.get(k)} (checkpoint) != {fingerprint.get(k)} (store)"
           for k in keys if checkpoint.get(k) != fingerprint.get(k)]
    if bad:
        raise TrainingError(path, "the checkpoint was trained on a store made with other settings or another "
                                  "vocabulary: " + "; ".join(bad) + ". Use that store, or train from scratch "
                                  "in another --out folder")


# --------------------------------------------------------------------------- checkpoints


_TMP_CHECKPOINT = re.compile(r"^\.(?:last|best)\.pt\.(\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(out_dir) -> list[Path]:
    """Delete ``.last.pt.<pid>.tmp``/``.best.pt.<pid>.tmp`` left by a run killed while saving.

    Only files of processes that no longer run are removed (a live run's
    checkpoint in progress is never touched). Returns the removed paths.
    """
    out_dir = Path(out_dir)
    removed = []
    if not out_dir.is_dir():
        return removed
    for p in out_dir.iterdir():
        m = _TMP_CHECKPOINT.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


#: The files a run writes into its folder (what ``overwrite`` deletes).
RUN_FILES = (LAST, BEST, METRICS_FILE, PLOT_FILE)


def prepare_run_folder(out_dir, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for a run; refuse to destroy an earlier run.

    Stale temporary checkpoints are removed first. A fresh run (not
    ``resume``) in a folder that holds anything else raises
    :class:`TrainingError` naming what is there, unless ``overwrite``
    (:func:`fit` then deletes the earlier run's files, :data:`RUN_FILES`,
    once everything else has been checked, just before training starts).
    """
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    if resume or not out_dir.is_dir():
        return
    present = sorted(p.name for p in out_dir.iterdir())
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise TrainingError(out_dir, f"the run folder is not empty ({shown}): continue that run with --resume, "
                                     f"start over with --overwrite (deletes it), or choose another --out")


def resumed_config(out_dir, config_cls, changes: dict, path_name: str = LAST):
    """The training config of the run in ``out_dir``, with the explicitly given ``changes`` applied.

    A resumed run continues with its checkpoint's config (model, preset
    values, split...); only :data:`RESUMABLE_CHANGES` may change. Giving
    ``max_steps`` without ``epochs`` lifts the epoch limit, as a fresh run
    does.

    Raises
    ------
    TrainingError
        No checkpoint in ``out_dir`` (the message names the command that
        starts the run), or a change of anything else, in one line naming
        the options.
    """
    path = Path(out_dir) / path_name
    if not path.is_file():
        raise TrainingError(path, "no checkpoint to resume: start the run without --resume")
    old = config_cls.from_json(read_checkpoint(path)["train_config"])
    changes = dict(changes)
    fixed = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and v != getattr(old, k, v))
    if fixed:
        names = ", ".join("--" + k.replace("_", "-") for k in fixed)
        allowed = ", ".join("--" + k.replace("_", "-") for k in sorted(RESUMABLE_CHANGES))
        raise TrainingError(path, f"a resumed run keeps its settings: {names} cannot change "
                                  f"(only {allowed} can); train from scratch in another --out to change them")
    changes = {k: v for k, v in changes.items() if k in RESUMABLE_CHANGES}
    if "max_steps" in changes and "epochs" not in changes:
        changes["epochs"] = None
    return dataclasses.replace(old, **changes)


@contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """While inside, SIGINT/SIGTERM set ``flag["signal"]`` (its name) instead of killing the process.

    The loop reads the flag after each step, saves ``last.pt`` and stops. A
    second signal restores the previous handlers and raises
    :class:`KeyboardInterrupt` (stop now). Outside the main thread (where
    handlers cannot be set) it does nothing.
    """
    import threading

    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, _frame):
        if flag["signal"] is not None:
            for s, h in previous.items():
                signal.signal(s, h)
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        print(f"\n{flag['signal']}: finishing this step, saving last.pt (again to stop at once)", file=sys.stderr)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_checkpoint(path, checkpoint: dict) -> Path:
    """``torch.save`` through a temporary file and a rename: a reader never sees half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a second Ctrl-C: no temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path) -> dict:
    """The checkpoint dict at ``path`` (on CPU); :class:`TrainingError` when it is not a mapkit checkpoint.

    Security: checkpoints hold optimiser state, RNG states and numpy arrays,
    so they are read with ``torch.load(weights_only=False)``, i.e. with
    pickle, which can run code: load only checkpoints you trust (your own
    runs, or files from someone you trust).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TrainingError(path, "no checkpoint here") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say so, with its name
        raise TrainingError(path, f"unreadable checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(path, "not a mapkit checkpoint")
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise TrainingError(path, f"checkpoint format version {ckpt.get('format_version')}, "
                                  f"this mapkit reads {CHECKPOINT_VERSION}")
    return ckpt


def build_model(model_kind: str, model_config_json: str):
    """The model of a checkpoint's ``model_kind`` ("placement" or "selection") and config JSON."""
    from mapkit.train.models import PlacementConfig, PlacementModel, SelectionConfig, SelectionModel

    kinds = {"placement": (PlacementConfig, PlacementModel), "selection": (SelectionConfig, SelectionModel)}
    if model_kind not in kinds:
        raise ValueError(f"unknown model kind {model_kind!r}")
    config_cls, model_cls = kinds[model_kind]
    return model_cls(config_cls.from_json(model_config_json))


def load_checkpoint(path, device="cpu"):
    """A trained model and its checkpoint, for generation.

    Parameters
    ----------
    path : path
        ``last.pt`` or ``best.pt`` of a ``mapkit train`` run.
    device : str or torch.device

    Returns
    -------
    model : torch.nn.Module
        :class:`~mapkit.train.models.PlacementModel` or
        :class:`~mapkit.train.models.SelectionModel`, weights loaded, in eval mode.
    checkpoint : dict
        Among others: ``stage`` ("ddc" or "transformer"), ``model_config``
        (JSON), ``stats`` (the ``stats.json`` the model was normalised with),
        ``feature_settings_json`` and ``feature_settings_hash``, ``step``,
        ``metrics`` (last validation); ddc: ``peak_picking`` (``threshold``,
        ``smoothing``, ``min_gap_frames``); transformer: ``vocab`` (the full
        vocab JSON) and ``vocab_hash``.
    """
    ckpt = read_checkpoint(path)
    try:
        model = build_model(ckpt["model_kind"], ckpt["model_config"])
    except ValueError as e:  # e.g. a model design this mapkit no longer reads
        raise TrainingError(path, f"cannot rebuild the model: {e}") from None
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes in order: equal digests, identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- logs


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed at once.

    Resuming from step ``s`` first drops the lines of steps after ``s`` (logged
    by the interrupted run after its last checkpoint), so the log never
    holds two histories; a line that is not JSON (torn by a kill mid-write)
    is dropped too.
    """

    def __init__(self, path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [json.dumps(r, sort_keys=True) for r in read_metrics(self.path)
                    if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl``; lines that are not a JSON object (a torn last line) are skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def best_step(records: list[dict], metric: str, maximize: bool) -> int | None:
    """The step of ``best.pt``: the first validation with the best ``metric`` (as :func:`fit` keeps it)."""
    best = step = None
    for r in records:
        if r.get("split") == "val" and isinstance(r.get(metric), (int, float)):
            v = r[metric]
            if best is None or (v > best if maximize else v < best):
                best, step = v, r["step"]
    return step


def plotted_metrics(records: list[dict]) -> list[str]:
    """The validation metrics :func:`plot_metrics` gives a panel each: numbers but :data:`NOT_METRICS`
    and ``loss`` (drawn with the training loss)."""
    return sorted({k for r in records if r.get("split") == "val" for k, v in r.items()
                   if isinstance(v, (int, float)) and k not in NOT_METRICS and k != "loss"
                   and not k.startswith("threshold_")})  # per-difficulty thresholds are settings, not metrics


def plot_metrics(metrics_path, png_path, metric: str | None = None, maximize: bool = False) -> Path:
    """Plot the training loss and every validation metric against the step into a PNG (matplotlib Agg).

    Only metrics are plotted (not :data:`NOT_METRICS`: token counts, the chosen
    threshold); with ``metric``, a dashed line on every panel marks the step
    of ``best.pt`` (best ``metric``, highest when ``maximize``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    val_keys = plotted_metrics(records)
    n = 1 + len(val_keys)
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.2 * n), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if val and "loss" in val[0]:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", ms=3, label="val loss")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    for ax, key in zip(axes[1:, 0], val_keys):
        ax.plot([r["step"] for r in val if key in r], [r[key] for r in val if key in r], "o-", ms=3)
        ax.set_ylabel(key, fontsize=8)
    best = best_step(records, metric, maximize) if metric else None
    if best is not None:
        for i, ax in enumerate(axes[:, 0]):
            ax.axvline(best, color="tab:green", ls="--", lw=1, label=f"best.pt (step {best})" if i == 0 else None)
        axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# --------------------------------------------------------------------------- the stage protocol


class Stage(abc.ABC):
    """What :func:`fit` needs from a stage; ``mapkit.train.ddc`` and ``.transformer`` implement it.

    Attributes set by the stage: ``name`` ("ddc"), ``model_kind``
    ("placement"), ``metric`` (validation key that decides ``best.pt``) and
    ``maximize``; ``config`` (its :class:`TrainConfig`), ``store``.
    """

    name = "stage"
    model_kind = ""
    metric = "loss"
    maximize = False
    need_vocab = False

    @abc.abstractmethod
    def prepare(self, stats: dict, train_songs: list, val_songs: list, seed: int):
        """Build the datasets (and anything derived from the training data)."""

    @abc.abstractmethod
    def model_config(self):
        """The resolved model config (e.g. with the store's vocabulary size)."""

    train_dataset = None
    val_dataset = None
    collate_fn = None

    @abc.abstractmethod
    def loss(self, model, batch: dict, device) -> torch.Tensor:
        """The training loss of one batch."""

    @abc.abstractmethod
    def evaluate(self, model, device, autocast) -> dict:
        """Validation metrics (rank 0 only), a dict of floats including :attr:`metric`."""

    def final_records(self, model, device, autocast) -> list:
        """Records (with their ``split``) for ``metrics.jsonl`` once a run has finished (rank 0; an ablation)."""
        return []

    def checkpoint_extras(self) -> dict:
        """Stage-specific entries of the checkpoint (threshold, vocabulary...)."""
        return {}

    def restore(self, checkpoint: dict):
        """Take back what :meth:`checkpoint_extras` saved, when resuming."""

    def close(self):
        """Close the datasets' files."""
        for ds in (self.train_dataset, self.val_dataset):
            if ds is not None:
                ds.close()


@dataclass
class TrainResult:
    """What :func:`fit` did: final step, checkpoint paths, last validation metrics, files written."""

    step: int
    last: Path | None
    best: Path | None
    metrics: dict
    metrics_path: Path | None
    plot_path: Path | None
    train_songs: list
    val_songs: list
    stopped_early: bool = False
    #: The signal that stopped the run ("SIGINT", "SIGTERM") after saving ``last``, or None.
    interrupted: str | None = None

    def summary(self) -> str | None:
        """What the run did, for people: step, validation metrics, files, the audio ablation (stage 2).

        None in every process but the one that reports (:func:`is_main_process`), so that a run under
        torchrun prints it once.
        """
        if not is_main_process():
            return None
        metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.metrics.items())
        lines = [f"step {self.step}{' (stopped early)' if self.stopped_early else ''}; "
                 f"validation: {metrics or self._no_validation()}",
                 f"checkpoint: {self.last}; log: {self.metrics_path}; curves: {self.plot_path}"]
        from mapkit.train.ablation import ablation_summary

        ablation = ablation_summary(self.metrics_path) if self.metrics_path else None
        return "\n".join(lines + ([ablation] if ablation else []))

    def _no_validation(self) -> str:
        """Why there are no validation metrics: no validation songs, or stopped by a signal before the first."""
        if self.val_songs and self.interrupted:
            return "none yet (stopped before the first validation)"
        return "none (no validation songs)"

    def interruption(self) -> str | None:
        """The line saying the run was stopped by a signal and how to go on, or None when it was not."""
        if not self.interrupted:
            return None
        return (f"interrupted by {self.interrupted} at step {self.step}: saved {self.last}; "
                f"continue with the same command and --resume")


def is_main_process() -> bool:
    """True in the process that reports and writes: rank 0 under torchrun (``RANK``), or the only one."""
    return os.environ.get("RANK", "0") == "0"


def _check_resume_config(old_json: str, new, path):
    old = json.loads(old_json)
    new_d = json.loads(new.to_json())
    diff = sorted(k for k in set(old) | set(new_d) if k not in RESUMABLE_CHANGES and old.get(k) != new_d.get(k))
    if diff:
        raise TrainingError(path, "cannot resume with a different training config: "
                                  + ", ".join(f"{k}: {old.get(k)!r} -> {new_d.get(k)!r}" for k in diff)
                                  + f" (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have exited (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def fit(stage: Stage, store: Store, out_dir, config: TrainConfig, options: RunOptions = RunOptions()) -> TrainResult:
    """Train ``stage`` on ``store`` into ``out_dir`` (see the module docstring).

    One function because it is one loop read in one sitting (nanoGPT-style): set-up (resume or split,
    model, optimiser), then each step, logging, validation and checkpoints in
    the order they happen; the pieces that stand alone are functions of their own.

    Raises
    ------
    TrainingError
        Resume without a checkpoint, or with a different config or store; a
        split without songs; too few items for one batch.
    StoreError
        The store is missing features, targets, stats or vocabulary.
    """
    from mapkit.progress import progress_bar

    out_dir = Path(out_dir)
    dist_info = init_distributed(options.device)
    device = resolve_device(options.device, dist_info)
    autocast_dtype = amp_dtype(options.amp, device)
    prepare_run_folder(out_dir, options.resume, options.overwrite)
    _barrier(dist_info)  # every rank has checked the folder before rank 0 writes into it
    fingerprint = store_fingerprint(store, stage.need_vocab)

    resume_ckpt = _resumed_checkpoint(out_dir, stage, config, fingerprint) if options.resume else None
    if resume_ckpt is not None:
        stats = resume_ckpt["stats"]  # normalise exactly as the run being continued did
        train_songs, val_songs = resume_ckpt["train_songs"], resume_ckpt["val_songs"]
        groups = resume_ckpt.get("song_groups") or {}
    else:
        stats = store.read_stats()
        train_songs, val_songs, groups = _split_songs(store, config, dist_info.main)

    if stage.need_vocab and dist_info.main:
        warn_vocabulary_leak(store, val_songs, groups)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    stage.prepare(stats, train_songs, val_songs, config.seed)
    if resume_ckpt is not None:
        stage.restore(resume_ckpt)
    model_config = stage.model_config()
    model = build_model(stage.model_kind, model_config.to_json()).to(device)
    if options.recompute:
        recompute_layers(model)
    train_ds = stage.train_dataset
    sampler = EpochSampler(len(train_ds), config.seed, True, dist_info.rank, dist_info.world_size)
    steps_per_epoch = sampler.per_rank // config.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(store.root, f"{len(train_ds)} training items make no batch of {config.batch_size} "
                                        f"on each of {dist_info.world_size} process(es): lower --batch-size")
    limits = [x for x in (config.max_steps, config.epochs and config.epochs * steps_per_epoch) if x]
    total_steps = min(limits)
    eval_every = eval_interval(config.eval_every, total_steps)

    optimizer, scheduler = _optimizer(model, config, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    step, epoch, batch_in_epoch = 0, 0, 0
    best_value = None
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        step, epoch, batch_in_epoch = resume_ckpt["step"], resume_ckpt["epoch"], resume_ckpt["batch_in_epoch"]
        best_value = resume_ckpt.get("best_value")
        rng = resume_ckpt["rng"]
        if len(rng) == dist_info.world_size:
            _set_rng_state(rng[dist_info.rank])
        else:  # another number of processes: continue, with fresh per-rank streams
            torch.manual_seed(config.seed * 1000 + dist_info.rank + step)
    else:
        torch.manual_seed(config.seed * 1000 + dist_info.rank)  # dropout: a stream per rank
    # The scheduler's lambda closes over total_steps: a resumed run that extends max_steps follows the new curve.

    train_model = model
    if dist_info.active:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist_info.main and options.overwrite and resume_ckpt is None:
        for name in RUN_FILES:  # the earlier run, replaced now that this one can start
            (out_dir / name).unlink(missing_ok=True)
    log = MetricsLog(out_dir / METRICS_FILE, resume_ckpt["step"] if resume_ckpt else None) if dist_info.main else None
    if dist_info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    last_metrics = dict(resume_ckpt.get("metrics") or {}) if resume_ckpt else {}

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    def checkpoint_dict(rngs: list) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "mapkit_version": mapkit.__version__, "stage": stage.name, "model_kind": stage.model_kind,
            "model_config": model_config.to_json(), "train_config": config.to_json(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "total_steps": total_steps,
            "rng": rngs, "world_size": dist_info.world_size,
            "stats": stats, "train_songs": list(train_songs), "val_songs": list(val_songs),
            "song_groups": {s: groups.get(s, s) for s in (*train_songs, *val_songs)},
            "grouping": grouping_record(groups, (*train_songs, *val_songs)),
            "metrics": dict(last_metrics), "best_value": best_value,
            **fingerprint, **stage.checkpoint_extras(),
        }

    def validate() -> dict:
        metrics = {}
        if dist_info.main and val_songs:
            model.eval()
            with torch.no_grad():
                metrics = stage.evaluate(model, device, autocast)
            model.train()
        return metrics

    started, cpu_started = time.monotonic(), cpu_seconds()
    bar = progress_bar(total=total_steps, initial=step, desc=f"train {stage.name}", unit="step",
                       disable=not (options.progress and dist_info.main), dynamic_ncols=True)
    loss_sum, loss_n = 0.0, 0
    last_path = best_path = None
    model.train()
    loader_gen = torch.Generator()
    stopping = options.stop_at is not None and step >= options.stop_at
    interrupted = None
    signals = stop_on_signals()
    flag = signals.__enter__()
    try:
        while step < total_steps and not stopping:
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=batch_in_epoch * config.batch_size)
            # The loader's own generator: creating an iterator must not draw from the global RNG (dropout's).
            loader_gen.manual_seed(config.seed * 1_000_003 + epoch)
            loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                                                 collate_fn=stage.collate_fn, num_workers=options.num_workers,
                                                 drop_last=True, generator=loader_gen,
                                                 pin_memory=device.type == "cuda",
                                                 worker_init_fn=_ignore_stop_signals if options.num_workers
                                                 else None)
            for batch in loader:
                batch = _to_device(batch, device)
                with autocast():
                    loss = stage.loss(train_model, batch, device)
                if not torch.isfinite(loss):
                    raise TrainingError(out_dir, f"non-finite loss {loss.item()} at step {step + 1}; "
                                                 f"lower --lr or check the store with mapkit validate")
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                loss_sum += float(loss.detach())
                loss_n += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", epoch=epoch, refresh=False)
                interrupted = _agree_on_signal(flag["signal"], dist_info, device)
                stopping = options.stop_at is not None and step >= options.stop_at or interrupted is not None
                done = step >= total_steps or stopping
                if log is not None and (step % config.log_every == 0 or done):
                    log.write({"split": "train", "step": step, "epoch": epoch, "loss": loss_sum / loss_n,
                               "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                               "elapsed_s": round(time.monotonic() - started, 3),
                               "cpu_s": round(cpu_seconds() - cpu_started, 3)})
                    loss_sum, loss_n = 0.0, 0
                # Collective, so on every rank at the same steps: the RNG states of all ranks for checkpoints.
                rngs = (_all_gather_object(_rng_state(), dist_info)
                        if step % eval_every == 0 or step % config.checkpoint_every == 0 or done else None)
                # an interrupted run saves last.pt at once; it validates only when due anyway
                if step % eval_every == 0 or done and interrupted is None:
                    metrics = validate()
                    if metrics:
                        last_metrics = metrics
                        log.write({"split": "val", "step": step, "epoch": epoch, **metrics})
                        value = metrics[stage.metric]
                        if best_value is None or (value > best_value if stage.maximize else value < best_value):
                            best_value = value
                            best_path = out_dir / BEST
                            save_checkpoint(best_path, checkpoint_dict(rngs))
                    _barrier(dist_info)
                if step % config.checkpoint_every == 0 or done:
                    if dist_info.main:
                        last_path = save_checkpoint(out_dir / LAST, checkpoint_dict(rngs))
                    _barrier(dist_info)
                if done:
                    break
            else:
                epoch += 1
                batch_in_epoch = 0
    finally:
        signals.__exit__(None, None, None)
    bar.close()

    digests = _all_gather_object(parameter_digest(model), dist_info)
    plot_path = metrics_path = None
    try:
        if dist_info.main:
            metrics_path = out_dir / METRICS_FILE
            if step >= total_steps and val_songs:
                model.eval()
                with torch.no_grad():
                    for record in stage.final_records(model, device, autocast):
                        log.write({"step": step, "epoch": epoch, **record})
            log.write({"split": "end", "step": step, "epoch": epoch, "rank_parameter_digests": digests,
                       "elapsed_s": round(time.monotonic() - started, 3),
                       "cpu_s": round(cpu_seconds() - cpu_started, 3)})
            if len(set(digests)) > 1:
                raise TrainingError(out_dir, f"the ranks' weights differ after training: {digests}")
            plot_path = plot_metrics(metrics_path, out_dir / PLOT_FILE, stage.metric, stage.maximize)
            if last_path is None and (out_dir / LAST).exists():
                last_path = out_dir / LAST
            if best_path is None and (out_dir / BEST).exists():
                best_path = out_dir / BEST
    finally:
        _leave_distributed(dist_info)
    stage.close()
    return TrainResult(step, last_path, best_path, last_metrics, metrics_path, plot_path, list(train_songs),
                       list(val_songs), stopped_early=step < total_steps, interrupted=interrupted)


def _resumed_checkpoint(out_dir: Path, stage: "Stage", config: TrainConfig, fingerprint: dict) -> dict:
    """``OUT/last.pt``, checked: the same stage, store and config (:data:`RESUMABLE_CHANGES` aside)."""
    if not (out_dir / LAST).is_file():
        raise TrainingError(out_dir / LAST, "no checkpoint to resume: start the run without --resume")
    resume_ckpt = read_checkpoint(out_dir / LAST)
    if resume_ckpt.get("stage") != stage.name:
        raise TrainingError(out_dir / LAST, f"a {resume_ckpt.get('stage')} checkpoint, not {stage.name}")
    check_fingerprint(resume_ckpt, fingerprint, out_dir / LAST, need_vocab=stage.need_vocab)
    _check_resume_config(resume_ckpt["train_config"], config, out_dir / LAST)
    return resume_ckpt


def _split_songs(store: Store, config: TrainConfig, main: bool) -> tuple[list, list, dict]:
    """``(train songs, validation songs, song groups)``: the songs with features and targets that pass the
    filters, split by group (two encodes of one song never sit on both sides)."""
    from mapkit.datasets.split import song_groups, split_by_song

    features_index = store.index("features")
    targets_index = store.index("targets")
    song_ids = set(features_index) & set(targets_index)
    if not song_ids:
        raise TrainingError(store.root, "no song has both features and targets")
    if config.min_score is not None or config.exclude_automapped:
        from mapkit.datasets.filters import filter_songs

        song_ids, left_out = filter_songs(targets_index, song_ids, config.min_score, config.exclude_automapped)
        if not song_ids:
            raise TrainingError(store.root, f"the filters leave no song ({len(left_out)} left out, e.g. "
                                            f"{next(iter(left_out.items()), ('', ''))[1]})")
        if left_out and main:
            import sys

            print(f"{len(left_out)} levels left out by the filters (e.g. {next(iter(sorted(left_out.items())))})",
                  file=sys.stderr)
    # by group: two encodes of one song never sit on both sides
    groups = song_groups(features_index)
    train_songs, val_songs = split_by_song(song_ids, config.val_fraction, config.seed, config.val_songs, groups)
    if not train_songs:
        raise TrainingError(store.root, "the training split is empty: lower --val-fraction")
    return train_songs, val_songs, groups


def _optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW (no weight decay on biases and norms) and its schedule: linear warm-up, then cosine (:func:`lr_factor`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, total_steps, config.min_lr_ratio))
    return optimizer, scheduler


def _ignore_stop_signals(_worker_id: int):
    """DataLoader workers ignore SIGINT/SIGTERM: a Ctrl-C reaches the whole process group, and the main
    process, not a worker that dies of it while the main one waits for its batch, decides to finish the
    step and save ``last.pt``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _agree_on_signal(name: str | None, dist_info: DistInfo, device) -> str | None:
    """The signal name when this rank (or, under DDP, any rank) was signalled; the ranks stop together."""
    if not dist_info.active:
        return name
    import torch.distributed as dist

    flag = torch.tensor([0 if name is None else signal.Signals[name].value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return None if int(flag) == 0 else signal.Signals(int(flag)).name
