"""Typo-tolerant species name search over every language of a label set."""

from __future__ import annotations

import pytest

from bot.name_search import MAX_QUERY_CHARS, normalize_name, search_names
from classifier.labels import LabelSet

FLOWERS5 = LabelSet.from_names(["daisy", "dandelion", "roses", "sunflowers", "tulips"])
OXFORD = LabelSet.oxford102()


def _first(labels: LabelSet, query: str) -> str:
    matches = search_names(labels, query)
    assert matches, f"no match for {query!r}"
    return labels.class_ids[matches[0].index]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sunflowr", "sunflowers"),
        ("Sunflowers", "sunflowers"),
        ("  TULIP ", "tulips"),
        ("dandelon", "dandelion"),
        ("daisey", "daisy"),
        ("向日葵", "sunflowers"),
        ("郁金香", "tulips"),
        ("蒲公", "dandelion"),
        ("郁金相", "tulips"),  # one wrong character
        ("向日癸", "sunflowers"),
        ("玫槐", "roses"),
        ("ｒｏｓｅｓ", "roses"),  # full-width letters
    ],
)
def test_flowers5_typos_and_languages(query: str, expected: str) -> None:
    assert _first(FLOWERS5, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sunflowr", "sunflower"),
        ("sunflower", "sunflower"),
        ("rose", "rose"),
        ("rosse", "rose"),
        ("lotsu", "lotus"),
        ("向日葵", "sunflower"),
        ("硬叶兜兰", "hard-leaved pocket orchid"),
        ("hard leaved pocket orchid", "hard-leaved pocket orchid"),
        ("pink-primrose", "pink primrose"),
    ],
)
def test_oxford_first_match(query: str, expected: str) -> None:
    assert _first(OXFORD, query) == expected


def test_exact_name_ranks_above_longer_names() -> None:
    matches = search_names(OXFORD, "rose")
    names = [OXFORD.class_ids[match.index] for match in matches]
    assert names[0] == "rose"
    # Names that contain the query are still offered, after the exact one.
    assert "lenten rose" in names


def test_one_entry_per_species() -> None:
    # "sunflowers" is both the class id and the English name; the species appears once.
    matches = search_names(FLOWERS5, "sunflowers")
    assert [match.index for match in matches].count(3) == 1


def test_limit_respected() -> None:
    assert len(search_names(OXFORD, "flower", limit=3)) == 3


@pytest.mark.parametrize("query", ["", "   ", "xyzzy", "qwerty", "1234", "a", "花"])
def test_nonsense_matches_nothing(query: str) -> None:
    assert search_names(FLOWERS5, query) == []


@pytest.mark.parametrize("query", ["hello", "helo", "金相", "日癸"])
def test_cjk_tolerance_stays_narrow(query: str) -> None:
    # English queries get no edit allowance; a CJK query two edits from every name matches nothing.
    assert search_names(FLOWERS5, query) == []


def test_single_character_needs_whole_name() -> None:
    assert search_names(OXFORD, "a") == []
    assert search_names(OXFORD, "花") == []


def test_too_long_query_matches_nothing() -> None:
    assert search_names(FLOWERS5, "sunflower" * (MAX_QUERY_CHARS // 9 + 1)) == []


def test_normalize_name_folds_case_and_separators() -> None:
    assert normalize_name("Hard-Leaved_Pocket  ORCHID") == "hard leaved pocket orchid"
    assert normalize_name("ＲＯＳＥ") == "rose"
