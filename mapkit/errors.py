"""Errors that name the input and the reason, so a run can report and go on."""

from __future__ import annotations


class MapkitError(Exception):
    """Base class: ``path`` is the offending file or folder, ``reason`` a short human reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LevelError(MapkitError):
    """A level (info or difficulty file) cannot be read or is corrupt."""


class AudioError(MapkitError):
    """An audio file is missing, unreadable, empty or otherwise unusable."""


class StoreError(MapkitError):
    """The store is locked, inconsistent or built with other settings."""
