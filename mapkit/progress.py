"""Progress bars: tqdm on a terminal, a plain line every few seconds in a log.

Every long-running mapkit command shows its progress through
:func:`progress_bar`. On a terminal that is a tqdm bar redrawn in place. When
the stream is not a terminal (output redirected to a file, a CI log), a bar
redrawn with carriage returns would write thousands of lines into the log;
there the same bar prints one plain line when it starts, then at most one
every :data:`LOG_INTERVAL_S` seconds, and one when it ends.
"""

from __future__ import annotations

import sys

#: Seconds between two progress lines when the stream is not a terminal.
LOG_INTERVAL_S = 10.0


class LineStream:
    """A file for tqdm that turns each redraw (``\\r`` + status) into one plain line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, file=None, interval_s: float = LOG_INTERVAL_S, **kwargs):
    """A tqdm progress bar on ``file`` (default stderr), as plain lines when ``file`` is not a terminal.

    Parameters
    ----------
    iterable : iterable, optional
        Wrapped as tqdm wraps it.
    file : file, optional
        Default ``sys.stderr``.
    interval_s : float
        Seconds between lines when not on a terminal.
    **kwargs
        Passed to :class:`tqdm.tqdm` (``total``, ``desc``, ``unit``, ``disable``...).
    """
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    if is_terminal(file):
        return tqdm(iterable, file=file, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), interval_s)
    kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 10.0)), interval_s)
    return tqdm(iterable, file=LineStream(file), ncols=100, **kwargs)
