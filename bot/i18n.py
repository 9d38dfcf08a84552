"""Message catalogs in English and Simplified Chinese, and the choice of language per person.

Each feature keeps its messages in its own module under `bot/messages/` as a dict
`MESSAGES = {key: {"en": ..., "zh": ...}}`. This module merges them and formats a
message for a language. Placeholders use `str.format` syntax.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping

from bot import messages as messages_package

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"


def _load_catalog() -> dict[str, dict[str, str]]:
    """Merge every `MESSAGES` dict found in `bot/messages/`, rejecting duplicate keys."""
    catalog: dict[str, dict[str, str]] = {}
    for module_info in sorted(pkgutil.iter_modules(messages_package.__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{messages_package.__name__}.{module_info.name}")
        module_messages: Mapping[str, Mapping[str, str]] = getattr(module, "MESSAGES", {})
        for key, translations in module_messages.items():
            if key in catalog:
                raise RuntimeError(f"message key {key!r} is defined twice (again in bot/messages/{module_info.name}.py)")
            catalog[key] = dict(translations)
    return catalog


CATALOG: dict[str, dict[str, str]] = _load_catalog()


def language_from_code(language_code: str | None) -> str:
    """Map a Telegram language code to a supported language: any `zh` code gives Chinese, anything else English."""
    if language_code and language_code.lower().split("-")[0].split("_")[0] == "zh":
        return "zh"
    return DEFAULT_LANGUAGE


def text(key: str, lang: str, /, **values: object) -> str:
    """Return message `key` in `lang` with `values` filled in, falling back to English."""
    translations = CATALOG[key]
    template = translations.get(lang) or translations[DEFAULT_LANGUAGE]
    return template.format(**values) if values else template
