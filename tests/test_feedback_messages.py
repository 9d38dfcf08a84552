"""The feedback, /history, /forget and /stats messages exist in both languages with the same placeholders."""

from __future__ import annotations

import string

import pytest

from bot.i18n import LANGUAGES, text
from bot.messages.feedback import MESSAGES


def _placeholders(template: str) -> set[str]:
    return {field for _literal, field, _spec, _conversion in string.Formatter().parse(template) if field}


@pytest.mark.parametrize("key", sorted(MESSAGES))
def test_message_in_every_language(key: str) -> None:
    translations = MESSAGES[key]
    assert set(translations) == set(LANGUAGES)
    for lang in LANGUAGES:
        assert translations[lang].strip(), (key, lang)
    assert _placeholders(translations["en"]) == _placeholders(translations["zh"]), key


def test_callback_notices_fit_answer_limit() -> None:
    """answerCallbackQuery accepts at most 200 characters of text."""
    for key in MESSAGES:
        if key.startswith("feedback.notice.") or key in {"forget.cancelled", "forget.done", "forget.nothing", "forget.expired", "forget.only_owner"}:
            for lang in LANGUAGES:
                assert len(text(key, lang)) <= 200, (key, lang)
