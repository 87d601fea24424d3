"""The one difficulty table: names, order, aliases, ranks and note jump speeds."""

import pytest

from mapkit.preprocess.difficulties import DIFFICULTIES, DIFFICULTY_INDEX, DIFFICULTY_SPECS, canonical_difficulty


@pytest.mark.parametrize("name, canonical", [("Expert+", "ExpertPlus"), ("expertplus", "ExpertPlus"),
                                             ("Expert Plus", "ExpertPlus"), ("EASY", "Easy"), ("normal", "Normal"),
                                             ("Hard", "Hard"), ("expert", "Expert"), ("ex+", "ExpertPlus")])
def test_canonical_difficulty(name, canonical):
    assert canonical_difficulty(name) == canonical


def test_canonical_difficulty_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown difficulty name 'Extreme'"):
        canonical_difficulty("Extreme")


def test_one_table_in_one_order():
    assert DIFFICULTIES == ("Easy", "Normal", "Hard", "Expert", "ExpertPlus")
    assert [DIFFICULTY_INDEX[d] for d in DIFFICULTIES] == [0, 1, 2, 3, 4]
    assert list(DIFFICULTY_SPECS) == list(DIFFICULTIES)
    ranks = [DIFFICULTY_SPECS[d].rank for d in DIFFICULTIES]
    assert ranks == [1, 3, 5, 7, 9]
    njs = [DIFFICULTY_SPECS[d].njs for d in DIFFICULTIES]
    assert njs == sorted(njs) and njs[1] == 10.0  # never faster for an easier difficulty
