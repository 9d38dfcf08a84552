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


def _all(labels: LabelSet, query: str) -> list[str]:
    return [labels.class_ids[match.index] for match in search_names(labels, query)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Sunflower", ["sunflower"]),
        ("SUNFLOWERS", ["sunflower"]),
        ("rose", ["rose"]),
        ("Roses", ["rose"]),
        ("玫瑰", ["rose"]),
        ("desert rose", ["desert-rose"]),
        ("Water Lily", ["water lily"]),
    ],
)
def test_exact_name_lists_only_exact(query: str, expected: list[str]) -> None:
    # Without the exact-only rule "Sunflower" also offers 桔梗 and 西番莲, and "rose" lenten rose.
    assert _all(OXFORD, query) == expected


@pytest.mark.parametrize("query", ["rose", "ROSES"])
def test_singular_matches_plural_class(query: str) -> None:
    labels = LabelSet.from_names(["roses", "desert_rose", "lenten_rose", "tulips"])

    assert _all(labels, query) == ["roses"]


def test_partial_name_still_fuzzy() -> None:
    # No species is called just "lily", so every lily is offered.
    names = _all(OXFORD, "lily")
    assert "tiger lily" in names
    assert "water lily" in names
    assert len(names) > 1


def test_plural_query_scores_its_singular() -> None:
    # "lilies" is scored as "lily" too, so the lilies rank above names that only look alike.
    names = _all(OXFORD, "lilies")
    assert names
    assert all(name.endswith("lily") for name in names), names


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("月季", "rose"),
        ("narcissus", "daffodil"),
        ("喇叭花", "morning glory"),
        ("扶桑", "hibiscus"),
        ("圣诞红", "poinsettia"),
        ("叶子花", "bougainvillea"),
        ("Plumeria", "frangipani"),
        ("莲花", "lotus"),
        ("gladiolus", "sword lily"),
    ],
)
def test_aliases_find_species(query: str, expected: str) -> None:
    assert _all(OXFORD, query) == [expected]


def test_folder_name_set_gets_aliases() -> None:
    # flowers5 names its rose class "roses"; the Oxford 102 alias of "rose" carries over.
    assert _all(FLOWERS5, "月季") == ["roses"]
    assert _all(FLOWERS5, "月季花") == ["roses"]  # one extra character


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
