"""mapkit's one error hierarchy: every error names the input (a file, folder or store) and the reason.

A run reports a :class:`MapkitError` of one item and goes on; the command line
prints it in one line (``error: PATH: reason``) and exits 1 when the run
itself cannot proceed::

    MapkitError
      LevelError        a level (info or difficulty file) cannot be read or is corrupt
      AudioError        an audio file is missing, unreadable, empty or otherwise unusable
      TempoError        a tempo map cannot be built (also a ValueError)
      StoreError        the store is locked, inconsistent or built with other settings
        DiskFullError   no room for the next item: the run stops, the store stays valid
      TrainingError     training cannot start or go on (bad checkpoint, mismatched store, empty split)
"""

from __future__ import annotations


class MapkitError(Exception):
    """Base class: ``path`` is the offending file or folder, ``reason`` a short human reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UsageError(MapkitError):
    """Arguments that are invalid or do not fit together (``path`` names the option): the CLI exits 64."""


class LevelError(MapkitError):
    """A level (info or difficulty file) cannot be read or is corrupt."""


class AudioError(MapkitError):
    """An audio file is missing, unreadable, empty or otherwise unusable."""


class TempoError(MapkitError, ValueError):
    """A tempo map cannot be built: invalid BPM, invalid region, inconsistent regions.

    Raised by pure code that does not know the file: ``path`` is optional and,
    when absent, the message is the reason alone. It is a ``ValueError`` too.
    """

    def __init__(self, reason: str, path=None):
        MapkitError.__init__(self, "" if path is None else path, reason)
        if path is None:
            self.args = (reason,)

    def __str__(self) -> str:
        return self.reason if not self.path else f"{self.path}: {self.reason}"


class StoreError(MapkitError):
    """The store is locked, inconsistent or built with other settings."""


class DiskFullError(StoreError):
    """The disk has no room for the next item: the run stops cleanly, the store stays valid."""


class TrainingError(MapkitError):
    """Training cannot start or go on (bad checkpoint, mismatched store, empty split)."""
