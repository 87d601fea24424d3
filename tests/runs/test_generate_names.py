"""mapkit generate: the level folder's name says which song it is, also for songs all called song.ogg."""

import json
import shutil
from pathlib import Path

import pytest

from mapkit.preprocess.sources import Source, discover
from mapkit.runs.generate import LEVEL_SUFFIX, default_level_name, generate_level
from tests.runs.test_generate import song, tiny_models  # noqa: F401  (song is a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRETSONFIRE = Path("/usr/share/games/fretsonfire/data/songs")


def test_a_generic_audio_name_gives_way_to_its_folder():
    assert default_level_name(Source("Feelings", "/x/Feelings", "level")) == f"Feelings{LEVEL_SUFFIX}"
    assert default_level_name(Source("My Tune", "/x/My Tune.ogg", "audio")) == f"My Tune{LEVEL_SUFFIX}"
    assert default_level_name(Source("song", "/x/Band - Tune/song.ogg", "audio")) == f"Band - Tune{LEVEL_SUFFIX}"
    assert default_level_name(Source("SONG", "/x/Other/SONG.EGG", "audio")) == f"Other{LEVEL_SUFFIX}"
    assert default_level_name(Source("song", "/song.ogg", "audio")) == f"song{LEVEL_SUFFIX}"  # no folder name
    # the Frets on Fire songs Debian ships: every one is a song.ogg, each gets its own level name
    songs = sorted(FRETSONFIRE.glob("*/*/song.ogg"))
    names = {default_level_name(discover(s)[0]) for s in songs}
    assert len(songs) >= 8 and len(names) == len(songs) and f"Feelings{LEVEL_SUFFIX}" in names


def test_generate_names_the_level_after_the_songs_folder(song, tmp_path):  # noqa: F811
    folder = tmp_path / "in" / "Band - Tune"
    folder.mkdir(parents=True)
    shutil.copy(song / "clicks.ogg", folder / "song.ogg")
    placement, selection, p_ckpt, s_ckpt = tiny_models()
    gen = generate_level(folder / "song.ogg", placement, selection, p_ckpt, s_ckpt, beam_size=1,
                         out_dir=tmp_path / "out")
    assert gen.folder == tmp_path / "out" / f"Band - Tune{LEVEL_SUFFIX}" and gen.zip_path.name == \
        f"Band - Tune{LEVEL_SUFFIX}.zip"
    assert json.loads((gen.folder / "Info.dat").read_text())["_songName"] == "Band - Tune"  # no tags: the folder
