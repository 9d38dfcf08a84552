"""The objects every handler needs, stored once in the application's `bot_data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telegram.ext import CallbackContext

    from bot.settings import Settings
    from classifier.service import ClassifierService
    from storage.images import ImageStore
    from storage.repository import Repository

RUNTIME_KEY = "flowerbot"


@dataclass
class BotContext:
    """Shared services of a running bot: settings, classifier, database and photo store."""

    settings: Settings
    service: ClassifierService
    repository: Repository
    images: ImageStore
    # Feature modules keep their own state here (rate limiter, retrain supervisor, metrics, ...).
    extras: dict[str, Any] = field(default_factory=dict)


def get_bot_context(context: CallbackContext) -> BotContext:
    """Return the `BotContext` stored in `context.application.bot_data`."""
    return context.application.bot_data[RUNTIME_KEY]
