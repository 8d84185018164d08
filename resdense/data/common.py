"""Plumbing shared by the datasets: the data warning class and the bad-image policy."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from resdense.errors import ConfigError, DataError

__all__ = ["DataWarning", "warn", "check_choice", "SkipBadImages"]


class DataWarning(UserWarning):
    """Something in a dataset was repaired, dropped or skipped; the message says what and how many."""


def warn(message: str) -> None:
    """Issue a :class:`DataWarning` attributed to the caller's caller (the dataset's user)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise :class:`~resdense.errors.ConfigError` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} = {value!r} is not one of {', '.join(repr(c) for c in choices)}")


class SkipBadImages:
    """Mixin: ``bad_images="skip"`` replaces an unreadable sample by the next readable one, with a counted warning.

    The skip is per process (each DataLoader worker counts its own); ``skipped`` lists the files skipped here.
    """

    bad_images: str = "raise"

    def _with_policy(self, index: int, load: Callable[[int], tuple]) -> tuple:
        if self.bad_images == "raise":
            return load(index)
        n = len(self)
        for step in range(n):
            try:
                return load((index + step) % n)
            except DataError as err:
                skipped = self.__dict__.setdefault("skipped", [])
                skipped.append(str(err))
                warn(f"skipped unreadable sample {(index + step) % n} ({len(skipped)} skipped so far): {err}")
        raise DataError(f"no readable sample left in the dataset ({n} tried)")
