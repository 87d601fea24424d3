"""The store contract in one module: its names agree with each other and with what the store reads."""

import numpy as np
import pytest

from mapkit.datasets.schema import (FEATURE_STAGES, GAP_NAMES, KIND_ROOTS, LEVEL_DATASETS, LEVEL_DTYPES, NOTE_FIELDS,
                                    SONG_ATTRS, band_sum_attrs, pad_attr, shard_name, shard_number)
from mapkit.datasets.store import Store
from mapkit.errors import StoreError
from mapkit.preprocess.notes import STORED_NOTE_DTYPE
from mapkit.preprocess.targets import Vocabulary


def test_every_level_dataset_has_one_dtype():
    assert set(LEVEL_DTYPES) == set(LEVEL_DATASETS)
    assert len(set(LEVEL_DATASETS)) == len(LEVEL_DATASETS)
    assert LEVEL_DATASETS[:5] == ("frame_class", "notes", "states", "tokens", "token_frames")
    assert LEVEL_DATASETS[5:9] == GAP_NAMES
    assert all(LEVEL_DTYPES[g] == np.float32 for g in GAP_NAMES)
    assert LEVEL_DTYPES["notes"] == STORED_NOTE_DTYPE and NOTE_FIELDS == STORED_NOTE_DTYPE.names


def test_song_attrs_name_the_pads_and_band_sums_of_every_stage():
    for stage in FEATURE_STAGES:
        assert pad_attr(stage) in SONG_ATTRS
        assert set(band_sum_attrs(stage)) <= set(SONG_ATTRS)
    assert set(KIND_ROOTS) == {"features", "targets"}


@pytest.mark.parametrize("number", [1, 42, 99999, 123456])
def test_shard_names_round_trip(number):
    assert shard_number(shard_name(number)) == number
    assert shard_number(shard_name(number) + ".partial") == number
    assert shard_number("shard-1.h5") is None and shard_number("notes.txt") is None


def test_vocab_read_and_write_through_the_store(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="no vocab.json: run mapkit build-targets first"):
        store.read_vocab()
    assert store.read_vocab(missing_ok=True) is None and store.read_vocab_json(missing_ok=True) is None
    vocab = Vocabulary.from_counts({(1,) * 12: 5, (2,) * 12: 3}, 10)
    store.write_vocab({**vocab.to_json(), "vocab_size": 10})
    assert store.read_vocab() == vocab and store.read_vocab_json()["vocab_size"] == 10
    store.vocab_path.write_text('{"states": [[1, 2]], "counts": "x"')
    with pytest.raises(StoreError, match="unreadable vocabulary") as e:
        store.read_vocab()
    assert str(store.vocab_path) in str(e.value)
