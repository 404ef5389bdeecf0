"""Errors mstools raises on purpose. Each message says what went wrong and what to do.

- :class:`MstoolsError` — base class: every error below is one.
- :class:`MissingWeightsError` — a real checkpoint's weights cannot be found or fetched.
- :class:`ArtifactError` — a file mstools wrote (steering vector, directions, store shard) is missing,
  truncated, corrupt, foreign or of another format version.
- :class:`StoreError` / :class:`StoreIntegrityError` — an activation store cannot be used as asked.
- :class:`DamagedFileError` — a file on disk is truncated, overwritten or corrupt
  (:class:`DamagedArtifactError`, :class:`DamagedStoreError`; :class:`StoreIntegrityError` is one).
- :class:`UnknownHookError` — a hook name the model does not have (lives in
  :mod:`mstools.core.names`, which suggests close names).

Environment failures (no weights, a read-only folder, a full disk, a damaged file) and bad input (a
typo, a wrong shape, a file made for another model) are told apart by :func:`is_bad_input`, which the command line uses for its exit codes.

>>> issubclass(StoreIntegrityError, MstoolsError)
True
"""
from __future__ import annotations

from typing import Mapping

__all__ = ["MstoolsError", "MissingWeightsError", "ArtifactError", "StoreError", "DamagedFileError",
           "DamagedArtifactError", "DamagedStoreError", "StoreIntegrityError", "BadInputError", "is_bad_input"]


class MstoolsError(Exception):
    """Base class of the errors mstools raises on purpose."""


class BadInputError(MstoolsError, ValueError):
    """An argument a user gave cannot be used (the message names it and says what would work)."""


class MissingWeightsError(MstoolsError, RuntimeError):
    """A real checkpoint's weights could not be found or fetched."""


class ArtifactError(MstoolsError, ValueError):
    """A file mstools wrote cannot be used: missing, truncated, corrupt, foreign or another version."""


class StoreError(MstoolsError, RuntimeError):
    """A store cannot be opened, created or written as asked; the message says what to do."""


class DamagedFileError(MstoolsError):
    """A file on disk is truncated, overwritten or corrupt (exit code 1: the environment, not the
    command). Raised as :class:`DamagedArtifactError` or :class:`DamagedStoreError`."""


class DamagedArtifactError(DamagedFileError, ArtifactError):
    """A vector, directions or probe file mstools wrote is truncated or corrupt."""


class DamagedStoreError(DamagedFileError, StoreError):
    """A store's manifest, side file or shard is missing, truncated or corrupt."""


class StoreIntegrityError(DamagedStoreError):
    """One or more shards are missing, truncated or corrupt.

    Attributes:
        problems: ``{shard file name: what is wrong}``.
    """

    def __init__(self, message: str, problems: Mapping[str, str]):
        super().__init__(message)
        self.problems = dict(problems)


def is_bad_input(err: BaseException) -> bool:
    """True for errors caused by what the user asked (exit code 2), False for the environment
    (missing weights, files, permissions, disk space: exit code 1).

    >>> is_bad_input(BadInputError("x")), is_bad_input(MissingWeightsError("y"))
    (True, False)
    >>> is_bad_input(ArtifactError("a file made for another model")), is_bad_input(DamagedArtifactError("truncated"))
    (True, False)
    """
    if isinstance(err, (MissingWeightsError, OSError, DamagedFileError)):
        return False
    return isinstance(err, (ValueError, TypeError, KeyError, LookupError, StoreError))
