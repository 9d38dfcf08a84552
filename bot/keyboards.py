"""Inline keyboards for answers, corrections and /forget, with signed callback data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.callbacks import Action, CallbackSigner, InvalidCallback, get_signer, prediction_binding
from bot.callbacks import parse as parse_callback
from bot.i18n import text

if TYPE_CHECKING:
    from bot.context import BotContext

logger = logging.getLogger(__name__)

# Candidates per page after "None of these".
CANDIDATES_PER_PAGE = 5

# Builds extra rows (reference photos, species card, ...) under every answer, in both
# its "choose" and its "recorded" state. Arguments: bot context, prediction row, language.
AnswerRowsBuilder = Callable[["BotContext", Any, str], Sequence[Sequence[InlineKeyboardButton]]]
_answer_row_builders: list[AnswerRowsBuilder] = []


def register_answer_rows(builder: AnswerRowsBuilder) -> None:
    """Add `builder`'s rows below the feedback buttons of every answer, in registration order."""
    if builder not in _answer_row_builders:
        _answer_row_builders.append(builder)


def _extra_rows(bot_context: BotContext, prediction: Any, lang: str, correction: Any = None) -> list[list[InlineKeyboardButton]]:
    rows: list[list[InlineKeyboardButton]] = []
    for builder in _answer_row_builders:
        rows.extend(list(row) for row in builder(bot_context, prediction, lang))
    if correction is not None:
        rows = _about_recorded_species(bot_context, prediction, lang, rows, correction)
    return rows


def _about_recorded_species(
    bot_context: BotContext, prediction: Any, lang: str, rows: list[list[InlineKeyboardButton]], correction: Any
) -> list[list[InlineKeyboardButton]]:
    """Point the "About <species>" button at the species a correction recorded, or drop it.

    The builders name the answer's top species, which a correction can overrule. A
    correction without a label (not a flower, a species not in the list), or with a
    class the served label set lacks, has no species card, so its button is dropped.
    """
    labels = bot_context.service.labels
    recorded_index: int | None = None
    if correction.label is not None:
        try:
            recorded_index = labels.index_of(correction.label)
        except KeyError:
            recorded_index = None
    signer = get_signer(bot_context)
    kept_rows: list[list[InlineKeyboardButton]] = []
    for row in rows:
        kept_buttons: list[InlineKeyboardButton] = []
        for button in row:
            if not _is_species_card_button(button):
                kept_buttons.append(button)
            elif recorded_index is not None:
                label = text("reference.button.about", lang, name=labels.display_name(recorded_index, lang))
                kept_buttons.append(prediction_button(signer, prediction, label, Action.SPECIES_CARD, recorded_index))
        if kept_buttons:
            kept_rows.append(kept_buttons)
    return kept_rows


def _is_species_card_button(button: InlineKeyboardButton) -> bool:
    if not isinstance(button.callback_data, str):
        return False
    try:
        return parse_callback(button.callback_data).action is Action.SPECIES_CARD
    except InvalidCallback:
        return False


def prediction_button(
    signer: CallbackSigner, prediction: Any, label: str, action: Action, argument: int = 0
) -> InlineKeyboardButton:
    """Return a button whose callback data is signed for `action` on one prediction row."""
    data = signer.encode(action, prediction.id, argument, binding=prediction_binding(prediction))
    return InlineKeyboardButton(label, callback_data=data)


def unknown_species_button(signer: CallbackSigner, prediction: Any, lang: str) -> InlineKeyboardButton:
    """Return the "Not in this list" button, which records the flower as a species the model does not have."""
    return prediction_button(signer, prediction, text("feedback.button.unknown_species", lang), Action.UNKNOWN_SPECIES)


def short_percent(probability: float) -> str:
    """Format a probability in [0, 1] as a whole percent for a button, showing "<1%" for small nonzero ones."""
    percent = probability * 100.0
    if 0.0 < percent < 1.0:
        return "<1%"
    return f"{percent:.0f}%"


def label_index(labels: Any, entry: dict[str, Any]) -> int | None:
    """Return the current label-set index of a stored top-k entry, or None when it has none.

    The class id decides, because a retrained model may order its classes differently.
    The stored index is used only when the label set does not contain the class id.
    """
    class_id = entry.get("class_id")
    class_ids = list(labels.class_ids)
    if class_id is not None and str(class_id) in class_ids:
        return class_ids.index(str(class_id))
    index = entry.get("index")
    if isinstance(index, int) and 0 <= index < len(class_ids):
        return index
    return None


def listed_indices(labels: Any, prediction: Any) -> list[int]:
    """Return the label indices the answer lists, highest probability first, without duplicates."""
    indices: list[int] = []
    for entry in prediction.top_k or []:
        index = label_index(labels, entry)
        if index is not None and index not in indices:
            indices.append(index)
    return indices


def answer_markup(bot_context: BotContext, prediction: Any, lang: str, *, correction: Any = None) -> InlineKeyboardMarkup:
    """Build the keyboard under an answer: one "this one" button per listed species, then
    "None of these" and "Not a flower", then the rows other features registered.

    With the prediction's current `correction` (a `storage.models.Correction`), the
    "About <species>" button names the recorded species instead of the top one.
    """
    signer = get_signer(bot_context)
    labels = bot_context.service.labels
    rows: list[list[InlineKeyboardButton]] = []
    for index in listed_indices(labels, prediction):
        name = labels.display_name(index, lang)
        label = text("feedback.button.pick", lang, name=name)
        rows.append([prediction_button(signer, prediction, label, Action.PICK, index)])
    rows.append(
        [
            prediction_button(signer, prediction, text("feedback.button.none_of_these", lang), Action.NONE_OF_THESE),
            prediction_button(signer, prediction, text("feedback.button.not_flower", lang), Action.NOT_FLOWER),
        ]
    )
    rows.extend(_extra_rows(bot_context, prediction, lang, correction))
    return InlineKeyboardMarkup(rows)


def recorded_markup(bot_context: BotContext, prediction: Any, lang: str, *, correction: Any = None) -> InlineKeyboardMarkup:
    """Build the keyboard under an answer whose feedback is recorded: "Change" and the extra rows.

    Pass the recorded `correction` so that "About <species>" names the recorded species.
    """
    signer = get_signer(bot_context)
    rows = [[prediction_button(signer, prediction, text("feedback.button.change", lang), Action.CHANGE)]]
    rows.extend(_extra_rows(bot_context, prediction, lang, correction))
    return InlineKeyboardMarkup(rows)


def candidates_markup(
    bot_context: BotContext,
    prediction: Any,
    lang: str,
    *,
    page: int,
    candidates: Sequence[tuple[int, float | None]],
) -> InlineKeyboardMarkup:
    """Build one page of further candidates after "None of these".

    `candidates` are `(label index, probability or None)` pairs, best first, without the
    species the answer already lists; it may be empty when the answer lists every class.
    The page has "Previous" after the first page and "More" when candidates remain,
    then "Not in this list" (a flower of a species the model does not have), then
    "Type the name" and "Back".
    """
    signer = get_signer(bot_context)
    labels = bot_context.service.labels
    start = page * CANDIDATES_PER_PAGE
    rows: list[list[InlineKeyboardButton]] = []
    for index, probability in candidates[start : start + CANDIDATES_PER_PAGE]:
        name = labels.display_name(index, lang)
        label = text("feedback.button.pick", lang, name=name)
        if probability is not None:
            label = text("feedback.button.candidate", lang, name=label, percent=short_percent(probability))
        rows.append([prediction_button(signer, prediction, label, Action.PICK, index)])
    paging: list[InlineKeyboardButton] = []
    if page > 0:
        previous = text("feedback.button.previous", lang)
        paging.append(prediction_button(signer, prediction, previous, Action.NONE_OF_THESE, page - 1))
    if start + CANDIDATES_PER_PAGE < len(candidates):
        more = text("feedback.button.more", lang)
        paging.append(prediction_button(signer, prediction, more, Action.NONE_OF_THESE, page + 1))
    if paging:
        rows.append(paging)
    rows.append([unknown_species_button(signer, prediction, lang)])
    rows.append(
        [
            prediction_button(signer, prediction, text("feedback.button.type_name", lang), Action.TYPE_NAME),
            prediction_button(signer, prediction, text("feedback.button.back", lang), Action.BACK),
        ]
    )
    return InlineKeyboardMarkup(rows)


def matches_markup(bot_context: BotContext, prediction: Any, lang: str, indices: Sequence[int]) -> InlineKeyboardMarkup:
    """Build the keyboard under the species that match a typed name, with "Cancel" last.

    When nothing matches (`indices` is empty), "Not in this list" comes before "Cancel".
    """
    signer = get_signer(bot_context)
    labels = bot_context.service.labels
    rows = []
    for index in indices:
        label = text("feedback.button.pick", lang, name=labels.display_name(index, lang))
        rows.append([prediction_button(signer, prediction, label, Action.PICK, index)])
    if not indices:
        rows.append([unknown_species_button(signer, prediction, lang)])
    rows.append([cancel_typing_button(signer, prediction, lang)])
    return InlineKeyboardMarkup(rows)


def cancel_typing_button(signer: CallbackSigner, prediction: Any, lang: str) -> InlineKeyboardButton:
    """Return the "Cancel" button that ends a pending "Type the name" for one prediction."""
    return prediction_button(signer, prediction, text("feedback.button.cancel_typing", lang), Action.CANCEL_TYPING)


def cancel_typing_markup(bot_context: BotContext, prediction: Any, lang: str) -> InlineKeyboardMarkup:
    """Build the keyboard under a reply that requests the name again: only "Cancel"."""
    return InlineKeyboardMarkup([[cancel_typing_button(get_signer(bot_context), prediction, lang)]])


def forget_markup(bot_context: BotContext, user_id: int, lang: str, *, asked_minute: int) -> InlineKeyboardMarkup:
    """Build the /forget confirmation keyboard, bound to the user and the minute it was asked."""
    signer = get_signer(bot_context)
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    text("forget.button.confirm", lang),
                    callback_data=signer.encode(Action.FORGET_CONFIRM, user_id, asked_minute),
                ),
                InlineKeyboardButton(
                    text("forget.button.cancel", lang),
                    callback_data=signer.encode(Action.FORGET_CANCEL, user_id, asked_minute),
                ),
            ]
        ]
    )
