"""The store's public contract in one place: folders, files, groups, datasets, dtypes, attributes, tokens.

Every writer (``extract``, ``build-targets``) and every reader (the store's
index, ``validate``, the torch datasets, ``audit``, ``stats``) takes these
names from here; docs/store.md describes the same contract for readers that
use plain h5py (docs/design.md §4)::

    STORE/
      .lock                      held (flock) by the one run that writes the store
      features/shard-NNNNN.h5    /songs/<song_id>/{placement, selection}
      targets/shard-NNNNN.h5     /levels/<song_id>/<Characteristic>/<Difficulty>/<LEVEL_DATASETS>
      vocab.json, stats.json
      reports/                   one JSON report per run

A change of anything here that an older reader would misread is a new
:data:`mapkit.SCHEMA_VERSION`.
"""

from __future__ import annotations

import re

import numpy as np

from mapkit import SCHEMA_VERSION  # noqa: F401 - part of the contract: every shard file carries it
from mapkit.preprocess.frame_events import FRAME_EVENTS
from mapkit.preprocess.notes import STORED_NOTE_DTYPE
from mapkit.preprocess.objects import EVENT_BOX_JSON, OBJECT_DATASETS, OBJECT_DTYPES
from mapkit.preprocess.targets import BOS, EOS, N_SPECIAL, PAD, SPECIAL_TOKENS, UNK  # noqa: F401 - the tokens

# --- folders and files ------------------------------------------------------------------------------

#: Kind of shard -> its folder in the store and the top-level group of its items.
KIND_ROOTS = {"features": "songs", "targets": "levels"}
REPORTS_DIR = "reports"
VOCAB_FILE = "vocab.json"
STATS_FILE = "stats.json"
LOCK_FILE = ".lock"
#: Journal of a committed ``build-targets --rebuild-vocab`` not yet applied.
REBUILD_JOURNAL = ".rebuild-vocab.json"

#: A complete shard's file name; a shard in progress adds :data:`PARTIAL_SUFFIX`.
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.h5$")
PARTIAL_SUFFIX = ".partial"
#: Dataset of a ``.partial`` shard naming the items flushed so far (deleted when the shard is committed).
FLUSHED = ".flushed"


def shard_name(number: int) -> str:
    """File name of complete shard ``number``: ``shard-00003.h5``."""
    return f"shard-{number:05d}.h5"


def shard_number(name: str) -> int | None:
    """The number of a shard's file name, complete or ``.partial``; None for any other name."""
    m = SHARD_PATTERN.match(name[: -len(PARTIAL_SUFFIX)] if name.endswith(PARTIAL_SUFFIX) else name)
    return int(m.group(1)) if m else None


#: Attributes of every shard file (``vocab_hash`` too in targets shards).
FILE_ATTRS = ("schema_version", "mapkit_version", "kind", "settings_json", "settings_hash", "created")

# --- checksums --------------------------------------------------------------------------------------

#: Attribute of every dataset: the CRC-32 of its values (:func:`mapkit.datasets.store.data_checksum`).
DATA_CHECKSUM = "crc32"
#: Attribute of every group of an item and of a shard's root: the CRC-32 of its other attributes.
ATTRS_CHECKSUM = "attrs_crc32"

# --- features: /songs/<song_id> ---------------------------------------------------------------------

#: Feature stages: one dataset each, ``[pad + T + pad, ...]`` float16, time first.
FEATURE_STAGES = ("placement", "selection")
FEATURE_DTYPE = np.dtype(np.float16)
#: The optional fingerprint dataset of a song (uint32 [m], Chromaprint; docs/store.md), and every dataset a
#: song group may hold.
SONG_FINGERPRINT = "chromaprint"
SONG_DATASETS = FEATURE_STAGES + (SONG_FINGERPRINT,)


def pad_attr(stage: str) -> str:
    """The song attribute holding a stage's pad widths ``[before, after]``: ``pad_placement``."""
    return f"pad_{stage}"


def band_sum_attrs(stage: str) -> tuple[str, str]:
    """The song attributes of a stage's per-band float64 sums of ``x`` and ``x**2`` over the T frames."""
    return f"{stage}_band_sum", f"{stage}_band_sumsq"


#: Attributes of every song group (the band sums are what stats.json is computed from).
SONG_ATTRS = ("n_frames", "pad_placement", "pad_selection", "sample_rate", "n_samples", "duration_s",
              "audio_sha256", "source") + tuple(a for s in FEATURE_STAGES for a in band_sum_attrs(s))
#: Song attributes written today that songs stored before they existed lack (so not required by validation):
#: ``group_id`` (:mod:`mapkit.datasets.groups`; missing = the song is its own group) and ``chromaprint_error``
#: (why the song has no ``chromaprint``, "" when it has one).
OPTIONAL_SONG_ATTRS = ("group_id", "chromaprint_error")

# --- targets: /levels/<song_id>/<Characteristic>/<Difficulty> ---------------------------------------

#: The four gap datasets, in the order the stage-2 model reads them.
GAP_NAMES = ("gap_prev_s", "gap_next_s", "gap_prev_beats", "gap_next_beats")
#: Datasets of one difficulty group, in the order they are written: the notes and what is made of
#: them, then every other object of the level (:mod:`mapkit.preprocess.objects`) and the per-frame events.
LEVEL_DATASETS = ("frame_class", "notes", "states", "tokens", "token_frames") + GAP_NAMES + OBJECT_DATASETS + (
    FRAME_EVENTS,)
#: The dtype of each.
LEVEL_DTYPES = {"frame_class": np.dtype(np.uint8), "notes": STORED_NOTE_DTYPE, "states": np.dtype(np.uint8),
                "tokens": np.dtype(np.int32), "token_frames": np.dtype(np.int32),
                **{name: np.dtype(np.float32) for name in GAP_NAMES},
                **OBJECT_DTYPES, EVENT_BOX_JSON: np.dtype(np.uint8), FRAME_EVENTS: np.dtype(np.uint8)}
#: Fields of the stored note record; those after ``beat`` are integers.
NOTE_FIELDS = STORED_NOTE_DTYPE.names
#: Frame of BOS (EOS sits on frame T): the stage-2 features' first and last pad rows.
BOS_FRAME = -1
#: ``token_frames`` value of batch padding (no frame at all).
NO_FRAME = -2
