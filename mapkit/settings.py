"""Frozen settings with a stable hash.

The hash of a settings object is the first 16 hex digits of the SHA-256 of its
canonical JSON (sorted keys, no spaces, tuples as lists, plus the settings
kind). It goes into every file mapkit writes, so data made with different
settings can never be mixed silently. Changing a default changes the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from mapkit.preprocess.timebase import FPS


class Settings:
    """Base of every settings and config class (a frozen dataclass): ``to_dict``, ``to_json``, ``hash``, ``from_dict``."""

    KIND = "settings"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps({"kind": self.KIND, **self.to_dict()}, sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in d.items():
            if k == "kind":
                continue
            if k not in names:
                raise ValueError(f"unknown {cls.__name__} field {k!r}")
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))


@dataclass(frozen=True)
class FeatureSettings(Settings):
    """Audio feature settings of both stages (docs/design.md §2)."""

    KIND = "features"

    fps: int = FPS
    # stage 1, "placement": DDC multi-resolution log-mel
    placement_sample_rate: int = 44100
    placement_n_ffts: tuple = (1024, 2048, 4096)
    placement_n_mels: int = 80
    placement_pad: int = 7
    # stage 2, "selection"
    selection_sample_rate: int = 16000
    selection_n_fft: int = 2048
    selection_n_mels: int = 100
    selection_pad: int = 1
    # log(mel power + log_floor), natural log
    log_floor: float = 1e-10
    # soxr quality; resampler choice moves features more than the STFT code does
    resample_quality: str = "HQ"

    def __post_init__(self):
        for sr in (self.placement_sample_rate, self.selection_sample_rate):
            if sr % self.fps:
                raise ValueError(f"sample rate {sr} is not a multiple of fps {self.fps}: hop would not be an integer")

    @property
    def placement_hop(self) -> int:
        return self.placement_sample_rate // self.fps

    @property
    def selection_hop(self) -> int:
        return self.selection_sample_rate // self.fps

    def pad(self, stage: str) -> int:
        """Rows of silence stored before and after the T frames of ``stage`` ("placement" or "selection")."""
        if stage not in ("placement", "selection"):
            raise ValueError(f"unknown feature stage {stage!r}")
        return self.placement_pad if stage == "placement" else self.selection_pad

    def unpad(self, stage: str, rows):
        """The T song frames of a padded ``stage`` array: its pad rows cut off both ends."""
        p = self.pad(stage)
        return rows[p: len(rows) - p]

    @property
    def silence_value(self) -> float:
        """Feature value of digital silence, used for padding: ``ln(log_floor)``."""
        return math.log(self.log_floor)


@dataclass(frozen=True)
class TargetSettings(Settings):
    """Level-reading and target settings (docs/design.md §§1 and 3)."""

    KIND = "targets"

    fps: int = FPS
    #: "quarantine" (default): a level with a non-zero _songTimeOffset is reported, not used.
    #: "apply": the offset is applied to note times (sign convention: see mapkit.preprocess.tempo).
    song_offset: str = "quarantine"
    #: a difficulty losing more than this fraction of its notes to drops is quarantined
    max_drop_fraction: float = 0.05
    vocab_size: int = 2000

    def __post_init__(self):
        if self.song_offset not in ("quarantine", "apply"):
            raise ValueError(f"song_offset must be 'quarantine' or 'apply', got {self.song_offset!r}")
