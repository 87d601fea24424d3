import numpy as np

from mapkit.preprocess.notes import BLUE, BOMB, RED
from mapkit.preprocess.parity import (
    BACKHAND, FOREHAND, NO_PARITY, ParitySettings, bomb_forces_reset, next_parity, parity_errors, swing_states,
)
from tests.preprocess.notes_helper import make_notes

UP, DOWN, LEFT, RIGHT, UP_LEFT, UP_RIGHT, DOWN_LEFT, DOWN_RIGHT, DOT = range(9)


def three_left_errors():
    """Left hand: down, DOWN, up, UP, down-left, DOWN-RIGHT, left -> 3 parity errors (capitals).
    Right hand alternates cleanly through down, up, right (either parity), dot, down-right, up."""
    red = [DOWN, DOWN, UP, UP, DOWN_LEFT, DOWN_RIGHT, LEFT]
    blue = [DOWN, UP, RIGHT, DOT, DOWN_RIGHT, UP]
    rows = [(1.0 + 0.5 * i, 1, 0, RED, d) for i, d in enumerate(red)]
    rows += [(1.25 + 0.5 * i, 2, 0, BLUE, d) for i, d in enumerate(blue)]
    return make_notes(rows)


def test_three_parity_errors_on_the_left_hand_none_on_the_right():
    notes = three_left_errors()
    counts = parity_errors(notes)
    assert counts["left"] == {"swings": 7, "resets": 3, "bomb_resets": 0, "errors": 3}
    assert counts["right"] == {"swings": 6, "resets": 0, "bomb_resets": 0, "errors": 0}
    st = swing_states(notes)
    red = notes["color"] == RED
    assert st.parity[red].tolist() == [FOREHAND, FOREHAND, BACKHAND, BACKHAND, FOREHAND, FOREHAND, BACKHAND]
    assert np.flatnonzero(st.error[red]).tolist() == [1, 3, 5]
    # right hand: forehand, then alternating; the horizontal and the dot take the expected parity
    assert st.parity[~red].tolist() == [FOREHAND, BACKHAND, FOREHAND, BACKHAND, FOREHAND, BACKHAND]
    assert st.hand.tolist() == [0 if r else 1 for r in red]


def test_a_bomb_where_the_hand_rests_makes_the_reset_intended():
    # down at (1, 1), then a bomb under it (same column, row <= 1), then down again: a bomb reset
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.5, 1, 0, BOMB, 0), (2.0, 1, 1, RED, DOWN)])
    counts = parity_errors(notes)["left"]
    assert counts == {"swings": 2, "resets": 1, "bomb_resets": 1, "errors": 0}
    # the same bomb above the hand does not force it: a parity error
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (1.5, 1, 2, BOMB, 0), (2.0, 1, 1, RED, DOWN)])
    assert parity_errors(notes)["left"]["errors"] == 1
    # a bomb after the second swing starts does not count either
    notes = make_notes([(1.0, 1, 1, RED, DOWN), (2.0, 1, 1, RED, DOWN), (2.0, 1, 0, BOMB, 0)])
    assert parity_errors(notes)["left"]["errors"] == 1
    st = swing_states(make_notes([(1.0, 1, 1, RED, DOWN), (1.5, 1, 0, BOMB, 0), (2.0, 1, 1, RED, DOT)]))
    assert st.bomb_reset.sum() == 1 and st.parity[st.hand == 0].tolist() == [FOREHAND, FOREHAND]


def test_sliders_and_stacks_are_one_swing_but_a_note_behind_the_cut_is_not():
    slider = make_notes([(1.0, 1, 2, RED, DOWN), (1.1, 1, 1, RED, DOT), (1.2, 1, 0, RED, DOWN)])
    assert parity_errors(slider)["left"] == {"swings": 1, "resets": 0, "bomb_resets": 0, "errors": 0}
    st = swing_states(slider)
    assert st.swing.tolist() == [0, 0, 0] and st.swing_start.tolist() == [True, False, False]
    assert st.swings["n_notes"].tolist() == [3] and st.swings["direction"].tolist() == [DOWN]
    stack = make_notes([(1.0, 0, 0, RED, DOWN), (1.0, 0, 1, RED, DOWN)])
    assert parity_errors(stack)["left"]["swings"] == 1
    behind = make_notes([(1.0, 1, 0, RED, DOWN), (1.15, 1, 2, RED, DOWN)])  # upwards against a down cut
    assert parity_errors(behind)["left"] == {"swings": 2, "resets": 1, "bomb_resets": 0, "errors": 1}
    wide = ParitySettings(merge_s=0.2)
    assert parity_errors(behind, wide)["left"]["swings"] == 1


def test_one_step_rule():
    assert next_parity(NO_PARITY, UP) == (BACKHAND, False)
    assert next_parity(NO_PARITY, DOT) == (FOREHAND, False)
    assert next_parity(BACKHAND, DOWN_LEFT) == (FOREHAND, False)
    assert next_parity(BACKHAND, UP_LEFT) == (BACKHAND, True)
    assert next_parity(BACKHAND, LEFT, bomb_reset=True) == (BACKHAND, True)
    assert bomb_forces_reset(UP, 2, 1, [2], [2]) and not bomb_forces_reset(UP, 2, 1, [2], [0])
    assert bomb_forces_reset(LEFT, 2, 1, [0], [1]) and not bomb_forces_reset(RIGHT, 2, 1, [0], [1])
    assert not bomb_forces_reset(DOT, 2, 1, [2], [1])


def test_empty_and_bomb_only_levels():
    assert parity_errors(make_notes([]))["left"]["swings"] == 0
    st = swing_states(make_notes([(1.0, 0, 0, BOMB, 0)]))
    assert st.hand.tolist() == [-1] and st.swing.tolist() == [-1] and len(st.swings) == 0


def test_incremental_hand_state_for_decoding():
    """What a parity-aware decoder does: carry a HandState and try candidate notes for the next step."""
    from mapkit.preprocess.parity import HandState, advance_hand

    s, new, order = advance_hand(HandState(), 1.0, [(1, 1, DOWN)])
    assert new and s.parity == FOREHAND and not s.reset and s.swings == 1
    up, new, _ = advance_hand(s, 1.5, [(1, 1, UP)])
    assert new and up.parity == BACKHAND and not up.error
    down, _, _ = advance_hand(s, 1.5, [(1, 1, DOWN)])
    assert down.error and down.reset
    bombed, _, _ = advance_hand(s, 1.5, [(1, 1, DOWN)], bombs=[(1, 0)])
    assert bombed.reset and bombed.bomb_reset and not bombed.error
    # a slider continues the swing; a dot-only swing takes its parity from a later arrow joining it
    slid, new, _ = advance_hand(s, 1.1, [(1, 0, DOWN)])
    assert not new and slid.swings == 1 and slid.row == 0
    dot, _, _ = advance_hand(up, 2.0, [(2, 1, DOT)])
    assert dot.parity == FOREHAND
    late, new, _ = advance_hand(dot, 2.05, [(2, 0, UP)])
    assert not new and late.parity == BACKHAND and late.error
    # a window of two arrows is taken in the order the cut meets them
    _, _, order = advance_hand(HandState(), 1.0, [(0, 0, UP), (0, 2, UP), (0, 1, UP)])
    assert order == [0, 2, 1]
