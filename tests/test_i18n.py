"""Message catalogs: every key in both languages with the same placeholders, and the language choice."""

from __future__ import annotations

import string

import pytest

from telegram.ext import Application

from bot.app import HANDLER_MODULES
from bot.commands import menu_commands
from bot.i18n import CATALOG, LANGUAGES, language_from_code, text
from classifier.labels import LabelSet
from tests.emulator import COMMAND_PATTERN


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def test_catalog_is_not_empty() -> None:
    assert len(CATALOG) > 20


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_key_has_both_languages(key: str) -> None:
    translations = CATALOG[key]

    for lang in LANGUAGES:
        assert translations.get(lang, "").strip(), f"{key} has no {lang} text"
    assert set(translations) <= set(LANGUAGES), f"{key} has unknown languages {set(translations) - set(LANGUAGES)}"


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_placeholders_match_across_languages(key: str) -> None:
    english = placeholders(CATALOG[key]["en"])
    chinese = placeholders(CATALOG[key]["zh"])

    assert english == chinese, f"{key}: en uses {sorted(english)}, zh uses {sorted(chinese)}"
    values = {name: "x" for name in english}
    for lang in LANGUAGES:
        assert text(key, lang, **values)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("zh", "zh"),
        ("zh-hans", "zh"),
        ("zh-hant", "zh"),
        ("zh-TW", "zh"),
        ("zh_CN", "zh"),
        ("ZH", "zh"),
        ("en", "en"),
        ("en-GB", "en"),
        ("de", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_language_from_code(code: str | None, expected: str) -> None:
    assert language_from_code(code) == expected


def test_command_menu_entries_are_valid() -> None:
    # Feature modules add their commands when they register their handlers.
    application = Application.builder().token("1:registration-only").build()
    for module in HANDLER_MODULES:
        module.register(application)

    for entry in menu_commands(include_admin=True):
        assert COMMAND_PATTERN.fullmatch(entry.command), entry.command
        for lang in LANGUAGES:
            description = text(entry.description_key, lang)
            assert 1 <= len(description) <= 256, f"{entry.command} ({lang}) description length {len(description)}"


def test_oxford102_names_in_both_languages() -> None:
    labels = LabelSet.oxford102()

    assert len(labels) == 102
    for lang in LANGUAGES:
        names = labels.names[lang]
        assert all(name.strip() for name in names), f"a class has no {lang} name"
        assert len(set(names)) == 102, f"{lang} names are not unique"
