"""Keyboards under answers: paging through candidates, the "About" button after a correction, "Cancel"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from bot.callbacks import MAX_CALLBACK_BYTES, Action, CallbackSigner, prediction_binding
from bot.handlers import reference
from bot.i18n import text
from bot.keyboards import (
    CANDIDATES_PER_PAGE,
    answer_markup,
    cancel_typing_markup,
    candidates_markup,
    recorded_markup,
    register_answer_rows,
)
from classifier.labels import LabelSet

TOKEN = SecretStr("123456:test-token")
OXFORD = LabelSet.oxford102()


@pytest.fixture(autouse=True)
def reference_rows() -> None:
    """Register the reference and species-card rows, as the bot's application does at start."""
    register_answer_rows(reference.answer_rows)


def _bot_context(labels: LabelSet) -> SimpleNamespace:
    settings = SimpleNamespace(callback_secret=None, telegram_bot_token=TOKEN)
    bundle = SimpleNamespace(path=Path("bundle"), references={"0": ["references/0.jpg"]})
    return SimpleNamespace(settings=settings, service=SimpleNamespace(labels=labels, bundle=bundle), extras={})


def _prediction(labels: LabelSet, indices: list[int]) -> SimpleNamespace:
    top_k = [{"index": index, "class_id": labels.class_ids[index], "probability": 0.1} for index in indices]
    return SimpleNamespace(id=7, chat_id=-100123, message_id=42, top_k=top_k, top1_class_id=top_k[0]["class_id"])


def _buttons(markup) -> list[tuple[str, Action, int]]:
    """Return (text, action, argument) for every button, with the callback data verified."""
    signer = CallbackSigner.from_settings(SimpleNamespace(callback_secret=None, telegram_bot_token=TOKEN))
    result = []
    for row in markup.inline_keyboard:
        for button in row:
            data = signer.decode(button.callback_data, binding=prediction_binding(_PREDICTION))
            result.append((button.text, data.action, data.argument))
    return result


_PREDICTION = _prediction(OXFORD, [0, 1, 2])


# -- paging after "None of these" ----------------------------------------------


def _page(page: int) -> list[tuple[str, Action, int]]:
    candidates = [(index, 0.01) for index in range(3, len(OXFORD))]
    return _buttons(candidates_markup(_bot_context(OXFORD), _PREDICTION, "en", page=page, candidates=candidates))


def _paging(page: int) -> list[tuple[str, int]]:
    return [(label, argument) for label, action, argument in _page(page) if action is Action.NONE_OF_THESE]


def test_first_page_has_only_more() -> None:
    assert _paging(0) == [(text("feedback.button.more", "en"), 1)]


def test_middle_page_has_previous_and_more() -> None:
    assert _paging(5) == [(text("feedback.button.previous", "en"), 4), (text("feedback.button.more", "en"), 6)]


def test_last_page_has_previous() -> None:
    # 99 candidates in pages of five: pages 0 to 19.
    last_page = (len(OXFORD) - 3 - 1) // CANDIDATES_PER_PAGE
    assert last_page == 19

    assert _paging(last_page) == [(text("feedback.button.previous", "en"), last_page - 1)]
    picks = [argument for _label, action, argument in _page(last_page) if action is Action.PICK]
    assert picks == list(range(3 + last_page * CANDIDATES_PER_PAGE, len(OXFORD)))


def test_paging_buttons_fit_callback_limit() -> None:
    candidates = [(index, 0.01) for index in range(3, len(OXFORD))]
    markup = candidates_markup(_bot_context(OXFORD), _PREDICTION, "zh", page=19, candidates=candidates)
    for row in markup.inline_keyboard:
        for button in row:
            assert len(button.callback_data.encode("utf-8")) <= MAX_CALLBACK_BYTES


# -- "About <species>" after a correction ----------------------------------------


def _about(markup) -> list[tuple[str, int]]:
    return [(label, argument) for label, action, argument in _buttons(markup) if action is Action.SPECIES_CARD]


def _about_text(index: int) -> str:
    return text("reference.button.about", "en", name=OXFORD.display_name(index, "en"))


def test_about_names_top_species_without_correction() -> None:
    context = _bot_context(OXFORD)

    assert _about(answer_markup(context, _PREDICTION, "en")) == [(_about_text(0), 0)]
    assert _about(recorded_markup(context, _PREDICTION, "en")) == [(_about_text(0), 0)]


@pytest.mark.parametrize("label", ["hard-leaved pocket orchid", "rose"], ids=["listed", "picked from the rest"])
def test_about_names_corrected_species(label: str) -> None:
    context = _bot_context(OXFORD)
    correction = SimpleNamespace(label=label, kind="corrected")
    index = OXFORD.index_of(label)

    assert _about(recorded_markup(context, _PREDICTION, "en", correction=correction)) == [(_about_text(index), index)]
    assert _about(answer_markup(context, _PREDICTION, "en", correction=correction)) == [(_about_text(index), index)]


@pytest.mark.parametrize("kind", ["not_flower", "unknown_species"])
def test_about_dropped_for_labelless_correction(kind: str) -> None:
    context = _bot_context(OXFORD)
    markup = recorded_markup(context, _PREDICTION, "en", correction=SimpleNamespace(label=None, kind=kind))

    assert _about(markup) == []
    # The reference-photo button in the same row stays.
    assert any(action is Action.REFERENCE_PHOTOS for _label, action, _argument in _buttons(markup))


def test_about_dropped_for_class_of_older_label_set() -> None:
    markup = recorded_markup(_bot_context(OXFORD), _PREDICTION, "en", correction=SimpleNamespace(label="retired bloom", kind="corrected"))

    assert _about(markup) == []


# -- "Cancel" under a request to type the name again -----------------------------


def test_cancel_typing_markup_has_only_cancel() -> None:
    markup = cancel_typing_markup(_bot_context(OXFORD), _PREDICTION, "zh")

    assert _buttons(markup) == [(text("feedback.button.cancel_typing", "zh"), Action.CANCEL_TYPING, 0)]
