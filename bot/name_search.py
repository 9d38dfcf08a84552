"""Typo-tolerant lookup of a typed species name in a label set.

Every name the label set carries is searched: each class id and each display name in
every language (English and Chinese for Oxford 102). Scores come from rapidfuzz's
`WRatio`, which combines whole-string, partial and token-order similarity on a 0-100 scale.

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


@dataclass(frozen=True, slots=True)
class NameMatch:
    """One species whose names match a query."""

    index: int
    score: float
    matched_name: str


def normalize_name(name: str) -> str:
    """Fold a name for comparison: NFKC (full-width to ASCII), lower case, `_` and `-` as spaces, one space between words."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    folded = folded.replace("_", " ").replace("-", " ")
    return " ".join(folded.split())


def has_cjk(text: str) -> bool:
    """Return whether `text` contains a CJK ideograph (the unified blocks and their extensions)."""
    return any(unicodedata.name(character, "").startswith("CJK UNIFIED IDEOGRAPH") for character in text)


@dataclass(frozen=True)
class _NameIndex:
    choices: tuple[str, ...]  # normalized names
    originals: tuple[str, ...]  # the same names as the label set spells them
    label_indices: tuple[int, ...]  # the class of each name


@functools.lru_cache(maxsize=8)
def _build_index(labels: LabelSet) -> _NameIndex:
    choices: list[str] = []
    originals: list[str] = []
    label_indices: list[int] = []
    seen: set[tuple[int, str]] = set()
    for index, class_id in enumerate(labels.class_ids):
        names = [class_id, *(names_in_language[index] for names_in_language in labels.names.values())]
        for name in names:
            normalized = normalize_name(name)
            if not normalized or (index, normalized) in seen:
                continue
            seen.add((index, normalized))
            choices.append(normalized)
            originals.append(name)
            label_indices.append(index)
    logger.debug("built a name index of %d names for %d classes", len(choices), len(labels))
    return _NameIndex(tuple(choices), tuple(originals), tuple(label_indices))


def search_names(
    labels: LabelSet,
    query: str,
    *,
    limit: int = DEFAULT_LIMIT,
    score_cutoff: float = DEFAULT_SCORE_CUTOFF,
) -> list[NameMatch]:
    """Return up to `limit` species whose names best match `query`, best first, one entry per species.

    An exact match of a whole name (after `normalize_name`) always ranks first. A
    one-character query matches whole names only. Queries longer than `MAX_QUERY_CHARS`
    or empty after folding return no matches.
    """
    normalized_query = normalize_name(query)
    if not normalized_query or len(normalized_query) > MAX_QUERY_CHARS:
        return []

    name_index = _build_index(labels)
    if len(normalized_query) == 1:
        # One character partially matches half the names, so it only counts as a whole name.
        score_cutoff = 100.0
    scored = process.extract(
        normalized_query,
        name_index.choices,
        scorer=fuzz.WRatio,
        score_cutoff=score_cutoff,
        limit=None,
    )

    scored = list(scored)
    if has_cjk(normalized_query) and len(normalized_query) >= CJK_MIN_CHARS:
        scored.extend(_cjk_near_misses(name_index, normalized_query))

    best_by_label: dict[int, NameMatch] = {}
    for _choice, score, position in scored:
        label = name_index.label_indices[position]
        # Exact matches sort above every fuzzy one, whatever WRatio gave the others.
        rank_score = 101.0 if name_index.choices[position] == normalized_query else float(score)
        current = best_by_label.get(label)
        if current is None or rank_score > current.score:
            best_by_label[label] = NameMatch(index=label, score=rank_score, matched_name=name_index.originals[position])

    ranked = sorted(best_by_label.values(), key=lambda match: (-match.score, match.index))
    return ranked[:limit]


def _cjk_near_misses(name_index: _NameIndex, query: str) -> list[tuple[str, float, int]]:
    """Return (name, score, position) for CJK names within CJK_MAX_EDITS of `query`, scored by `fuzz.ratio`."""
    near = []
    for position, choice in enumerate(name_index.choices):
        if len(choice) < CJK_MIN_CHARS or not has_cjk(choice):
            continue
        if Levenshtein.distance(query, choice, score_cutoff=CJK_MAX_EDITS) <= CJK_MAX_EDITS:
            near.append((choice, fuzz.ratio(query, choice), position))
    return near
