"""Typo-tolerant lookup of a typed species name in a label set.

Every name the label set carries is searched: each class id, each display name in
every language (English and Chinese for Oxford 102) and each alias (月季 for rose).

A query that equals a name, ignoring case and an English plural ending on the last
word ("Sunflower" and "sunflowers"), returns only the species with such a name, so
"rose" does not also offer lenten rose and desert-rose. Any other query is ranked
by rapidfuzz's `WRatio`, which combines whole-string, partial and token-order
similarity on a 0-100 scale.

Chinese names are short, so one wrong character costs a third or half of the score and
WRatio alone rejects "郁金相" for 郁金香. A query with CJK characters therefore also
matches names of two or more characters that are one edit away (one character wrong,
missing or extra); English queries keep the WRatio cut-off alone.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from dataclasses import dataclass

from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from classifier.labels import LabelSet

logger = logging.getLogger(__name__)

# Maximum query length, in characters. No species name comes close to it.
MAX_QUERY_CHARS = 100
# WRatio below this is noise: "sunflowr" scores about 95 against "sunflower" and
# unrelated names of similar length score under 50.
DEFAULT_SCORE_CUTOFF = 70.0
DEFAULT_LIMIT = 6
# Edits (one character wrong, missing or extra) a CJK query may be from a name of
# at least CJK_MIN_CHARS characters and still match it.
CJK_MAX_EDITS = 1
CJK_MIN_CHARS = 2


# Score of a match that equals the query, ignoring case and plural endings.
EXACT_SCORE = 100.0
# Last-word endings that do not mark an English plural ("iris", "lotus", "grass").
_NOT_PLURAL_ENDINGS = ("ss", "us", "is")


@dataclass(frozen=True, slots=True)
class NameMatch:
    """One species whose names match a query."""

    index: int
    score: float
    # The name that matched: a class id, a display name or an alias, so not for display.
    matched_name: str


def normalize_name(name: str) -> str:
    """Fold a name for comparison: NFKC (full-width to ASCII), lower case, `_` and `-` as spaces, one space between words."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    folded = folded.replace("_", " ").replace("-", " ")
    return " ".join(folded.split())


def plural_forms(normalized: str) -> frozenset[str]:
    """Return a normalized name with the forms it has without an English plural ending on its last word.

    `roses` gives {roses, rose, ros} and `lilies` gives {lilies, lily}. Two names are
    equal up to plurals when their forms intersect. Stems that are not words
    (`ros`) only ever meet the same stem of another plural.
    """
    forms = {normalized}
    head, _, last = normalized.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last.endswith("ies") and len(last) > 4:
        forms.add(f"{prefix}{last[:-3]}y")
    if last.endswith("es") and len(last) > 4:
        forms.add(f"{prefix}{last[:-2]}")
    if last.endswith("s") and not last.endswith(_NOT_PLURAL_ENDINGS) and len(last) > 3:
        forms.add(f"{prefix}{last[:-1]}")
    return frozenset(forms)


def has_cjk(text: str) -> bool:
    """Return whether `text` contains a CJK ideograph (the unified blocks and their extensions)."""
    return any(unicodedata.name(character, "").startswith("CJK UNIFIED IDEOGRAPH") for character in text)


@dataclass(frozen=True)
class _NameIndex:
    choices: tuple[str, ...]  # normalized names
    originals: tuple[str, ...]  # the same names as the label set spells them
    label_indices: tuple[int, ...]  # the class of each name
    positions_by_form: dict[str, tuple[int, ...]]  # each of `plural_forms(choice)` -> positions in `choices`


@functools.lru_cache(maxsize=8)
def _build_index(labels: LabelSet) -> _NameIndex:
    choices: list[str] = []
    originals: list[str] = []
    label_indices: list[int] = []
    positions_by_form: dict[str, list[int]] = {}
    seen: set[tuple[int, str]] = set()
    for index, class_id in enumerate(labels.class_ids):
        display_names = [names_in_language[index] for names_in_language in labels.names.values()]
        for name in [class_id, *display_names, *labels.aliases_of(index)]:
            normalized = normalize_name(name)
            if not normalized or (index, normalized) in seen:
                continue
            seen.add((index, normalized))
            for form in plural_forms(normalized):
                positions_by_form.setdefault(form, []).append(len(choices))
            choices.append(normalized)
            originals.append(name)
            label_indices.append(index)
    logger.debug("built a name index of %d names for %d classes", len(choices), len(labels))
    frozen_forms = {form: tuple(positions) for form, positions in positions_by_form.items()}
    return _NameIndex(tuple(choices), tuple(originals), tuple(label_indices), frozen_forms)


def search_names(
    labels: LabelSet,
    query: str,
    *,
    limit: int = DEFAULT_LIMIT,
    score_cutoff: float = DEFAULT_SCORE_CUTOFF,
) -> list[NameMatch]:
    """Return up to `limit` species whose names best match `query`, best first, one entry per species.

    When `query` equals a whole name up to case and plural endings (`plural_forms`),
    only the species with such a name are returned, the one spelled exactly as typed
    first. A one-character query matches whole names only. Queries longer than
    `MAX_QUERY_CHARS` or empty after folding return no matches.
    """
    normalized_query = normalize_name(query)
    if not normalized_query or len(normalized_query) > MAX_QUERY_CHARS:
        return []

    name_index = _build_index(labels)
    exact = _exact_matches(name_index, normalized_query)
    if exact:
        return exact[:limit]
    if len(normalized_query) == 1:
        # One character partially matches half the names, so it only counts as a whole name.
        score_cutoff = 100.0
    # Each singular form of the query is scored too ("lilies" as "lily"), and a species keeps its best score.
    scored: list[tuple[str, float, int]] = []
    for form in sorted(plural_forms(normalized_query)):
        scored.extend(process.extract(form, name_index.choices, scorer=fuzz.WRatio, score_cutoff=score_cutoff, limit=None))
    if has_cjk(normalized_query) and len(normalized_query) >= CJK_MIN_CHARS:
        scored.extend(_cjk_near_misses(name_index, normalized_query))

    best_by_label: dict[int, NameMatch] = {}
    for _choice, score, position in scored:
        label = name_index.label_indices[position]
        current = best_by_label.get(label)
        if current is None or score > current.score:
            best_by_label[label] = NameMatch(index=label, score=float(score), matched_name=name_index.originals[position])

    ranked = sorted(best_by_label.values(), key=lambda match: (-match.score, match.index))
    return ranked[:limit]


def _exact_matches(name_index: _NameIndex, normalized_query: str) -> list[NameMatch]:
    """Return one match per species with a name equal to the query up to plural endings, as typed first."""
    positions = sorted({position for form in plural_forms(normalized_query) for position in name_index.positions_by_form.get(form, ())})
    best_by_label: dict[int, tuple[bool, int]] = {}
    for position in positions:
        label = name_index.label_indices[position]
        as_typed = name_index.choices[position] == normalized_query
        if label not in best_by_label or (as_typed and not best_by_label[label][0]):
            best_by_label[label] = (as_typed, position)
    ordered = sorted(best_by_label.items(), key=lambda item: (not item[1][0], item[0]))
    return [
        NameMatch(index=label, score=EXACT_SCORE, matched_name=name_index.originals[position])
        for label, (_as_typed, position) in ordered
    ]


def _cjk_near_misses(name_index: _NameIndex, query: str) -> list[tuple[str, float, int]]:
    """Return (name, score, position) for CJK names within CJK_MAX_EDITS of `query`, scored by `fuzz.ratio`."""
    near = []
    for position, choice in enumerate(name_index.choices):
        if len(choice) < CJK_MIN_CHARS or not has_cjk(choice):
            continue
        if Levenshtein.distance(query, choice, score_cutoff=CJK_MAX_EDITS) <= CJK_MAX_EDITS:
            near.append((choice, fuzz.ratio(query, choice), position))
    return near
