"""Writing level folders and BeatSaver-style zips with deterministic bytes.

Used by the demo set and by ``mapkit generate`` through :func:`write_level`:
a level is written under a temporary name and renamed into place, so a
reader never sees half a level.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

#: A fixed timestamp: the same files always give the same zip bytes.
ZIP_DATE = (2024, 1, 1, 0, 0, 0)


def remove_path(path: Path):
    """Delete a file, a link or a folder tree at ``path`` if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_folder(path: Path, files: dict[str, bytes]):
    """Create folder ``path`` holding ``files`` (name -> bytes)."""
    path = Path(path)
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)


def write_zip(path: Path, files: dict[str, bytes]):
    """Write ``files`` (name -> bytes) at the root of zip ``path``, sorted, with fixed dates.

    Audio (``.egg``/``.ogg``) is already compressed and is stored as is, as
    BeatSaver's zips do; everything else is deflated.
    """
    with zipfile.ZipFile(path, "w") as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith((".egg", ".ogg")) else zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])


#: The forms a level is written in: a folder ``NAME/`` and a zip ``NAME.zip``.
LEVEL_FORMS = ("folder", "zip")


def write_level(out_dir, name: str, files: dict, forms=LEVEL_FORMS) -> dict:
    """Write ``files`` ({file name: bytes}) as level ``out_dir/name`` in each of ``forms``; ``{form: path}``.

    Each form is written under a temporary name (``.NAME.tmp``,
    ``.NAME.zip.tmp``) and renamed into place, replacing an earlier level of
    the same name; an earlier level in a form not written now is deleted, so
    a name never holds two different levels. The zip holds the files at its
    root (as BeatSaver wants), the audio stored, the JSON deflated.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = {"folder": out_dir / name, "zip": out_dir / f"{name}.zip"}
    unknown = set(forms) - set(final)
    if unknown or not forms:
        raise ValueError(f"forms must be some of {LEVEL_FORMS}, got {tuple(forms)}")
    tmp = {form: out_dir / f".{final[form].name}.tmp" for form in forms}
    for form in forms:
        remove_path(tmp[form])
        (write_folder if form == "folder" else write_zip)(tmp[form], files)
    for form in LEVEL_FORMS:
        if form not in forms:
            remove_path(final[form])
    for form in forms:
        if form == "folder":
            remove_path(final[form])
            tmp[form].rename(final[form])
        else:
            os.replace(tmp[form], final[form])  # a file: replaced in one step
    return {form: final[form] for form in forms}
