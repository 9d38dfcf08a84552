"""Species cards: a species' names in both languages and a link to its Wikipedia article.

Article titles come from `classifier/data/species_links.json`, keyed by class
id. The link goes to the article in the person's language; without a title in
that language it goes to the English article, and for a class missing from
the file it goes to a Wikipedia search for the English name.
"""

from __future__ import annotations

import functools
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from bot.i18n import text
from classifier.labels import LabelSet

logger = logging.getLogger(__name__)

SPECIES_LINKS_PATH = Path(__file__).resolve().parents[1] / "classifier" / "data" / "species_links.json"
WIKIPEDIA_LANGUAGES = ("en", "zh")
# Characters left unescaped in article paths; Wikipedia writes them literally in its own URLs.
_TITLE_SAFE = "()_,'-.:!"


@dataclass(frozen=True)
class WikipediaLink:
    """A link to a Wikipedia article, or to a search when no article title is known."""

    url: str
    title: str
    lang: str
    is_search: bool = False


@functools.cache
def species_articles() -> dict[str, dict[str, str]]:
    """Return `{class id: {language: article title}}`, read once from the JSON file."""
    document = json.loads(SPECIES_LINKS_PATH.read_text(encoding="utf-8"))
    articles = document.get("articles", {})
    return {str(class_id).lower(): dict(titles) for class_id, titles in articles.items()}


def article_url(title: str, lang: str) -> str:
    """Return the URL of a Wikipedia article, with spaces as underscores as Wikipedia writes them."""
    if lang not in WIKIPEDIA_LANGUAGES:
        raise ValueError(f"unsupported Wikipedia language {lang!r}; expected one of {', '.join(WIKIPEDIA_LANGUAGES)}")
    return f"https://{lang}.wikipedia.org/wiki/{quote(title.replace(' ', '_'), safe=_TITLE_SAFE)}"


def wikipedia_link(labels: LabelSet, index: int, lang: str) -> WikipediaLink:
    """Return the Wikipedia link for class `index` in `lang`, falling back to English, then to a search."""
    class_id = labels.class_ids[index]
    titles = species_articles().get(class_id.lower())
    if titles is None:
        # Custom label sets use folder names as ids; try the English display name as well.
        titles = species_articles().get(labels.display_name(index, "en").lower())
    if titles:
        if titles.get(lang):
            return WikipediaLink(article_url(titles[lang], lang), titles[lang], lang)
        if titles.get("en"):
            return WikipediaLink(article_url(titles["en"], "en"), titles["en"], "en")
    name = labels.display_name(index, "en")
    query = urlencode({"search": name})
    return WikipediaLink(f"https://en.wikipedia.org/w/index.php?{query}", name, "en", is_search=True)


def species_card(labels: LabelSet, index: int, lang: str) -> str:
    """Return the HTML text of the species card for class `index` in `lang`."""
    name = labels.display_name(index, lang)
    lines = [text("species.card.title", lang, name=html.escape(name))]
    for other in ("en", "zh"):
        other_name = labels.display_name(index, other)
        # A label set without Chinese names falls back to English; show each distinct name once.
        if other != lang and other in labels.languages and other_name and other_name != name:
            lines.append(text(f"species.card.name_{other}", lang, name=html.escape(other_name)))

    link = wikipedia_link(labels, index, lang)
    if link.is_search:
        key = "species.card.wikipedia_search"
    elif link.lang != lang:
        key = "species.card.wikipedia_english"
    else:
        key = "species.card.wikipedia"
    lines.append(text(key, lang, url=html.escape(link.url), title=html.escape(link.title)))
    return "\n".join(lines)
