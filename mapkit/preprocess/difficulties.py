"""Beat Saber's difficulties: their names, order, aliases, ranks and note jump speeds (one table).

Every module that names, orders or conditions on a difficulty imports it from
here: level reading (canonical names), the stage-1 model and its datasets (the
conditioning index), the writers of generated and demo levels (rank and note
jump speed), evaluation (table order).
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Canonical difficulty names, easiest first; the index is the stage-1 model's conditioning input.
DIFFICULTIES = ("Easy", "Normal", "Hard", "Expert", "ExpertPlus")

#: Difficulty name -> its conditioning index (Easy 0 .. ExpertPlus 4).
DIFFICULTY_INDEX = {name: i for i, name in enumerate(DIFFICULTIES)}


class DifficultySpec(NamedTuple):
    """What an info file says about a difficulty besides its name."""

    #: ``_difficultyRank``: 1, 3, 5, 7, 9
    rank: int
    #: ``_noteJumpMovementSpeed`` in m/s
    njs: float


#: Difficulty -> (``_difficultyRank``, note jump speed in m/s): the values of the official levels,
#: written into every level mapkit makes (generated and demo levels alike).
DIFFICULTY_SPECS = {
    "Easy": DifficultySpec(1, 10.0),
    "Normal": DifficultySpec(3, 10.0),
    "Hard": DifficultySpec(5, 12.0),
    "Expert": DifficultySpec(7, 16.0),
    "ExpertPlus": DifficultySpec(9, 18.0),
}

_ALIASES = {**{name.lower(): name for name in DIFFICULTIES}, "expert+": "ExpertPlus", "ex+": "ExpertPlus"}


def canonical_difficulty(name: str) -> str:
    """The canonical difficulty name: ``"Expert+"``, ``"expertplus"``, ``"Expert Plus"`` -> ``"ExpertPlus"``.

    Case, spaces, ``_`` and ``-`` are ignored.

    Raises
    ------
    ValueError
        ``name`` is not one of Easy, Normal, Hard, Expert, ExpertPlus (or an alias).

    >>> canonical_difficulty("Expert+"), canonical_difficulty("expertplus"), canonical_difficulty(" hard ")
    ('ExpertPlus', 'ExpertPlus', 'Hard')
    """
    key = re.sub(r"[\s_\-]", "", str(name)).lower()
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown difficulty name {name!r}") from None
