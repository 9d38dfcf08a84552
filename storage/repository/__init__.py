"""The queries the bot and the retrain supervisor use.

Every public method of :class:`Repository` runs in its own short transaction
and returns ORM objects that are detached from their session but keep their
loaded columns (the session factory sets ``expire_on_commit=False``). The
models define no relationships, so nothing lazy-loads after the session has
closed.

Writes on SQLite start with ``BEGIN IMMEDIATE``, so lock waits go through the
busy timeout. When SQLite still reports a locked database, or PostgreSQL a
serialization failure or deadlock, the whole transaction is retried with
exponential backoff, so a prediction is not lost to a momentary lock.
"""

from __future__ import annotations

from storage.repository.base import NotFoundError, NotOwnerError, RepositoryBase, StorageError
from storage.repository.corrections import CorrectionQueries, LabelledExample
from storage.repository.inbox import InboxQueries
from storage.repository.predictions import HistoryEntry, PredictionQueries
from storage.repository.registry import RegistryQueries
from storage.repository.users import UserQueries

__all__ = [
    "HistoryEntry",
    "LabelledExample",
    "NotFoundError",
    "NotOwnerError",
    "Repository",
    "RepositoryBase",
    "StorageError",
]


class Repository(UserQueries, PredictionQueries, CorrectionQueries, RegistryQueries, InboxQueries):
    """Data access for flowerbot: ``Repository(session_factory)``, then await its methods.

    See :class:`RepositoryBase` for the retry settings.
    """
