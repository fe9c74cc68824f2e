"""The one exception type cxrlearn raises for faults a user can fix.

A corrupt PNG, a folder in the wrong layout, a checkpoint made for another number of
classes: these are expected faults, not bugs. They raise `CxrlearnError` with a message
that names the file and says what to do. The command line prints that message on one line
and exits non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["CxrlearnError", "Terminated", "TrainingDiverged", "TrainingInterrupted"]


class CxrlearnError(Exception):
    """An expected, user-fixable fault; the message names the file and the problem.

    Args:
        message: What went wrong and, where it helps, what to do about it.
        path: The file or folder concerned, if any. It is put in front of the message.

    Example:
        >>> str(CxrlearnError("not a PNG, JPEG or DICOM file", path="notes.txt"))
        'notes.txt: not a PNG, JPEG or DICOM file'
    """

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(message if self.path is None else f"{self.path}: {message}")


class TrainingDiverged(CxrlearnError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class TrainingInterrupted(CxrlearnError):
    """Ctrl-C or SIGTERM stopped the run; checkpoints of finished epochs were kept.

    Attributes:
        signal_number: The signal that stopped it: 2 (SIGINT, Ctrl-C) or 15 (SIGTERM). The
            command line exits with 128 + it, the shell's convention (130, 143).
    """

    signal_number: int = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a cluster's scheduler), raised where Ctrl-C's
    KeyboardInterrupt would be, so that both stop a run the same way (`cxrlearn.cli`
    installs the handler that raises it)."""
