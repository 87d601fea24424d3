"""Writing level folders and BeatSaver-style zips with deterministic bytes.

Used by the demo set and by ``mapkit generate``; callers write under a
temporary name and rename into place, so a reader never sees half a level.
"""

from __future__ import annotations

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
