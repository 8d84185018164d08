"""Exception types of resdense.

Every error raised on bad user input derives from :class:`ResdenseError`, so the CLI can print it as one line
and exit with code 2 (or the error's ``exit_code``). Each also derives from the built-in type a caller would naturally catch (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["ResdenseError", "ConfigError", "WeightsError", "DataError", "EvaluationError", "WriteError", "MissingDependency",
           "CheckpointError", "TrainingInterrupted"]


class ResdenseError(Exception):
    """Base class: a problem with the user's input, reported in one line."""


class ConfigError(ResdenseError, ValueError):
    """A constructor argument or config value that cannot be honoured (names the key and value)."""


class WeightsError(ResdenseError, ValueError):
    """A weight file that cannot be read or does not fit the model (names the file and the key)."""


class DataError(ResdenseError, ValueError):
    """A dataset file or annotation that is missing or malformed (names the file, field and value)."""


class EvaluationError(ResdenseError, ValueError):
    """Inputs to a metric that cannot be scored correctly (names what was found)."""


class WriteError(ResdenseError, OSError):
    """A file that could not be written (disk full, read-only file system, a path below a regular file): names the
    file and the OS error, and says whether the previous file is intact. Not bad input: the CLI exits with 1."""

    exit_code = 1


class CheckpointError(WriteError):
    """A checkpoint that could not be written (see :class:`WriteError`)."""


class MissingDependency(ResdenseError, ImportError):
    """An optional package that a feature needs is not installed: names the feature and the ``resdense[extra]``
    that installs it."""


class TrainingInterrupted(ResdenseError):
    """Training stopped on a signal (SIGTERM: preemption, ``torchrun`` or SLURM shutting the job down) after
    finishing its step and writing ``last.pt``; launching the same command again resumes. Not bad input, but
    reported the same way: one line, and ``exit_code`` 128 + the signal number, as a shell reports a signal."""

    every_rank = True  # raised alike by every process of a torchrun job: rank 0 alone reports it

    def __init__(self, message: str, signum: int = 15) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self):  # picklable with its signal (torch.distributed hands errors between ranks)
        return type(self), (str(self), self.signum)
