"""The stage-2 copy head (SelectionConfig.copy_head): a state copied from an earlier note that sounds alike."""

from dataclasses import replace

import pytest
import torch

from mapkit.preprocess.targets import BOS, EOS, N_SPECIAL
from mapkit.train.models import SELECTION_PRESETS, SelectionConfig, SelectionModel, selection_loss
from mapkit.train.transformer import transformer_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_STATES, N_TONES, N_NOTES = 24, 6, 30
TINY = SelectionConfig(vocab_size=N_SPECIAL + N_STATES, d_model=32, n_encoder_layers=1, n_decoder_layers=1,
                       n_heads=2, d_ff=64, dropout=0.0, copy_head=True)
TONES = torch.randn(N_TONES, 100, generator=torch.Generator().manual_seed(0))  # one sound per tone, in every song


def repeat_songs(n_songs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources [n, N+2, 104] and tokens [n, N+2] where a note's state is its tone's, chosen per song.

    Each song maps its tones to states of its own (so across songs a tone says
    nothing about the state), and every note of one tone gets the same state:
    the state of a note is the state of the earlier note with the same tone.
    """
    g = torch.Generator().manual_seed(seed)
    tones = torch.randint(0, N_TONES, (n_songs, N_NOTES), generator=g)
    state_of = torch.stack([torch.randperm(N_STATES, generator=g)[:N_TONES] for _ in range(n_songs)])
    src = torch.zeros(n_songs, N_NOTES + 2, 104)
    src[:, 1:-1, :100] = TONES[tones] + 0.1 * torch.randn(n_songs, N_NOTES, 100, generator=g)
    src[:, 1:-1, 100:] = 0.5
    tokens = torch.full((n_songs, N_NOTES + 2), EOS)
    tokens[:, 0] = BOS
    tokens[:, 1:-1] = N_SPECIAL + torch.gather(state_of, 1, tones)
    return src, tokens


def shuffled_audio(src: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = src.clone()
    for b in range(len(src)):
        out[b, 1:-1, :100] = src[b, 1 + torch.randperm(N_NOTES, generator=g), :100]
    return out


def train(config: SelectionConfig, steps: int) -> SelectionModel:
    torch.manual_seed(0)
    model = SelectionModel(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        src, tokens = repeat_songs(16, seed=1000 + step)
        loss = selection_loss(model(src, None, tokens[:, :-1]), tokens[:, 1:], label_smoothing=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def held_out_loss(model: SelectionModel, src: torch.Tensor, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return float(selection_loss(model(src, None, tokens[:, :-1]), tokens[:, 1:], label_smoothing=0.0))


def test_the_copy_head_finds_the_earlier_note_that_sounds_alike():
    src, tokens = repeat_songs(32, seed=7)
    copy, plain = train(TINY, 150), train(replace(TINY, copy_head=False), 150)
    real, shuffled = held_out_loss(copy, src, tokens), held_out_loss(copy, shuffled_audio(src, 8), tokens)
    no_copy = held_out_loss(plain, src, tokens)
    # about 1 note in 5 is a song's first of its tone (log 24 = 3.2 nats each): the rest can be copied
    assert real < 1.0 < no_copy - 0.5
    assert shuffled > real + 1.0  # the copy follows the sound, not the position


def test_copy_head_mixes_distributions_and_copies_only_earlier_tokens():
    torch.manual_seed(0)
    model = SelectionModel(TINY).eval()
    src, tokens = repeat_songs(2, seed=3)
    with torch.no_grad():
        model.copy_gate.bias.fill_(30.0)  # always copy: the output is the copy distribution alone
        logp = model(src, None, tokens[:, :-1])
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, N_NOTES + 1))
    for b in range(2):
        for i in range(1, N_NOTES + 1):
            earlier = set(tokens[b, 1: i + 1].tolist())
            likely = set(torch.nonzero(logp[b, i].exp() > 1e-6).flatten().tolist())
            assert likely <= earlier  # only tokens the earlier notes were given


def test_copy_head_is_on_in_the_presets_and_off_in_older_checkpoints():
    assert SELECTION_PRESETS["default"].copy_head and SELECTION_PRESETS["tiny"].copy_head
    assert transformer_config("tiny").model.copy_head and not transformer_config("tiny", copy_head=False).model.copy_head
    old = replace(TINY, copy_head=False)
    saved = {k: v for k, v in old.to_dict().items() if k != "copy_head"}  # a design-3 config before the field
    assert SelectionConfig.from_dict(saved) == old
    model = SelectionModel(SelectionConfig.from_dict(saved))
    model.load_state_dict(SelectionModel(old).state_dict())  # the same weights: it loads
    assert not hasattr(model, "copy_gate")
    assert SelectionConfig.from_json(TINY.to_json()).copy_head


def test_copy_head_decodes_windows_side_by_side_with_reordered_beams():
    torch.manual_seed(0)
    model = SelectionModel(TINY).eval()
    src, tokens = repeat_songs(2, seed=5)  # two windows, two beams each
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        memory = model.encode(src, None)
        cache = model.start_cache(memory, None, batch_size=4, capacity=12)
        prefix = torch.full((4, 1), BOS)
        for step in range(10):
            stepped = model.decode_step(prefix[:, -1], cache)
            full = model.decode(memory.repeat_interleave(2, dim=0), None, prefix)[:, -1]
            torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
            index = torch.tensor([0, 0, 3, 2]) if step % 2 else torch.tensor([1, 0, 2, 2])  # within each window
            cache.reorder(index)
            prefix = torch.cat([prefix[index], torch.randint(N_SPECIAL, TINY.vocab_size, (4, 1), generator=g)], 1)


def test_copy_audio_is_the_notes_sound_less_the_songs_mean_and_silent_when_zeroed():
    model = SelectionModel(TINY).eval()
    src, _ = repeat_songs(2, seed=9)
    mask = torch.ones(src.shape[:2], dtype=torch.bool)
    mask[1, -5:] = False  # padding after a shorter level: not in its mean
    src[1, -5:, :100] = 50.0
    audio = model.copy_audio(src, mask)
    mean = src[1, 1:-5, :100].mean(0)
    torch.testing.assert_close(audio[1, 3], torch.nn.functional.normalize(src[1, 3, :100] - mean, dim=0))
    torch.testing.assert_close(audio[:, 1:].norm(dim=-1), torch.ones(2, N_NOTES + 1))
    silent = src.clone()
    silent[..., :100] = 0.0
    assert model.copy_audio(silent, None).abs().max() == 0
    with torch.no_grad():
        memory = model.encode(src, mask)
    assert memory.shape == (2, N_NOTES + 2, TINY.d_model + TINY.audio_dim)
    torch.testing.assert_close(memory[..., TINY.d_model:], audio)
