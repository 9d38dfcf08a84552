"""Signed callback data: size limit, round trips and rejection of altered data."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.callbacks import (
    FEEDBACK_ACTIONS,
    FORGET_ACTIONS,
    MAX_CALLBACK_BYTES,
    MAX_INTEGER,
    Action,
    CallbackSigner,
    InvalidCallback,
    action_pattern,
    decode,
    encode,
    parse,
    prediction_binding,
    signing_key,
)
from bot.keyboards import (
    CANDIDATES_PER_PAGE,
    answer_markup,
    candidates_markup,
    forget_markup,
    matches_markup,
    recorded_markup,
    register_answer_rows,
)
from bot.handlers import reference
from bot.handlers.reference import REFERENCE_ACTIONS
from classifier.labels import LabelSet

KEY = signing_key(None, SecretStr("123456:test-token"))
OTHER_KEY = signing_key(SecretStr("another secret"), SecretStr("123456:test-token"))


def _utf8_length(data: str) -> int:
    return len(data.encode("utf-8"))


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("subject", [0, 1, 2**31, 2**53 + 1, MAX_INTEGER])
@pytest.mark.parametrize("argument", [0, 101, 2**31 - 1, MAX_INTEGER])
def test_every_callback_fits_64_bytes(action: Action, subject: int, argument: int) -> None:
    data = encode(KEY, action, subject, argument)
    assert _utf8_length(data) <= MAX_CALLBACK_BYTES, data
    assert data.isascii()
    decoded = decode(KEY, data)
    assert decoded.action is action
    assert decoded.subject == subject
    assert decoded.argument == argument


@pytest.fixture(autouse=True)
def reference_rows() -> None:
    """Register the reference and species-card rows, as the bot's application does at start."""
    register_answer_rows(reference.answer_rows)


class _Settings(SimpleNamespace):
    pass


def _bot_context(labels: LabelSet) -> SimpleNamespace:
    settings = _Settings(callback_secret=None, telegram_bot_token=SecretStr("123456:test-token"))
    # A bundle with a reference photo, so the reference and species-card rows that feature
    # modules add to every answer are built and checked too.
    bundle = SimpleNamespace(path=Path("bundle"), references={"0": ["references/0.jpg"]})
    return SimpleNamespace(settings=settings, service=SimpleNamespace(labels=labels, bundle=bundle), extras={})


def _all_callback_data(markup) -> list[str]:
    return [button.callback_data for row in markup.inline_keyboard for button in row if button.callback_data]


def test_keyboards_fit_64_bytes_at_max_ids() -> None:
    """Every keyboard the bot sends, built for the largest ids and label indices, stays within the limit."""
    labels = LabelSet.oxford102()
    bot_context = _bot_context(labels)
    last_index = len(labels) - 1
    prediction = SimpleNamespace(
        id=MAX_INTEGER,
        chat_id=-(10**13) + 1,  # supergroup ids have 13 digits after the minus sign
        message_id=2**31 - 1,
        top_k=[
            {"index": last_index, "class_id": labels.class_ids[last_index], "probability": 0.5},
            {"index": last_index - 1, "class_id": labels.class_ids[last_index - 1], "probability": 0.3},
            {"index": 0, "class_id": labels.class_ids[0], "probability": 0.2},
        ],
    )
    candidates = [(index, 0.001) for index in range(len(labels))]
    last_page = (len(candidates) - 1) // CANDIDATES_PER_PAGE

    markups = [
        answer_markup(bot_context, prediction, "en"),
        answer_markup(bot_context, prediction, "zh"),
        recorded_markup(bot_context, prediction, "zh"),
        candidates_markup(bot_context, prediction, "en", page=0, candidates=candidates),
        candidates_markup(bot_context, prediction, "zh", page=last_page, candidates=candidates),
        matches_markup(bot_context, prediction, "zh", list(range(last_index - 5, last_index + 1))),
        forget_markup(bot_context, MAX_INTEGER, "zh", asked_minute=int(time.time()) // 60),
    ]

    seen_actions: set[Action] = set()
    for markup in markups:
        for data in _all_callback_data(markup):
            assert _utf8_length(data) <= MAX_CALLBACK_BYTES, data
            action = parse(data).action
            binding = "" if action in FORGET_ACTIONS else prediction_binding(prediction)
            assert decode(KEY, data, binding=binding).action is action
            seen_actions.add(action)
    assert seen_actions == FEEDBACK_ACTIONS | FORGET_ACTIONS | REFERENCE_ACTIONS


def test_answer_markup_lists_each_species_once() -> None:
    labels = LabelSet.from_names(["daisy", "dandelion", "roses", "sunflowers", "tulips"])
    bot_context = _bot_context(labels)
    prediction = SimpleNamespace(
        id=7,
        chat_id=1001,
        message_id=5,
        top_k=[
            {"index": 3, "class_id": "sunflowers", "probability": 0.7},
            {"index": 0, "class_id": "daisy", "probability": 0.2},
            {"index": 4, "class_id": "tulips", "probability": 0.1},
        ],
    )
    markup = answer_markup(bot_context, prediction, "zh")
    texts = [button.text for row in markup.inline_keyboard for button in row]
    assert texts[:5] == ["✓ 向日葵", "✓ 雏菊", "✓ 郁金香", "都不是", "不是花"]
    assert texts[5:] == ["📷 参考照片", "📖 关于向日葵"]
    picks = [decode(KEY, data, binding="1001:5") for data in _all_callback_data(markup)[:3]]
    assert [pick.argument for pick in picks] == [3, 0, 4]
    assert all(pick.subject == 7 for pick in picks)


def test_answer_markup_maps_class_ids_to_current_order() -> None:
    """A stored index from a model with another class order is mapped back through its class id."""
    labels = LabelSet.from_names(["tulips", "sunflowers", "roses", "dandelion", "daisy"])
    bot_context = _bot_context(labels)
    prediction = SimpleNamespace(
        id=1, chat_id=1001, message_id=9, top_k=[{"index": 3, "class_id": "sunflowers", "probability": 0.9}]
    )
    data = _all_callback_data(answer_markup(bot_context, prediction, "en"))[0]
    assert decode(KEY, data, binding="1001:9").argument == 1


@given(
    action=st.sampled_from(list(Action)),
    subject=st.integers(min_value=0, max_value=MAX_INTEGER),
    argument=st.integers(min_value=0, max_value=MAX_INTEGER),
)
def test_round_trip_any_integers(action: Action, subject: int, argument: int) -> None:
    data = encode(KEY, action, subject, argument)
    assert _utf8_length(data) <= MAX_CALLBACK_BYTES
    assert decode(KEY, data) == decode(KEY, data)
    assert (decode(KEY, data).subject, decode(KEY, data).argument) == (subject, argument)


def test_altered_subject_rejected() -> None:
    data = encode(KEY, Action.PICK, 41, 3)
    altered = data.replace("p15.", "p16.", 1)
    assert altered != data
    with pytest.raises(InvalidCallback):
        decode(KEY, altered)


def test_altered_action_rejected() -> None:
    data = encode(KEY, Action.PICK, 41, 3)
    with pytest.raises(InvalidCallback):
        decode(KEY, "x" + data[1:])


def test_altered_argument_rejected() -> None:
    data = encode(KEY, Action.PICK, 41, 3)
    action_and_subject, _argument, signature = data.split(".")
    with pytest.raises(InvalidCallback):
        decode(KEY, f"{action_and_subject}.4.{signature}")


def test_every_single_character_change_rejected() -> None:
    data = encode(KEY, Action.FORGET_CONFIRM, 123456789, 29_000_000)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-."
    for position in range(len(data)):
        for character in alphabet:
            if character == data[position]:
                continue
            altered = data[:position] + character + data[position + 1 :]
            with pytest.raises(InvalidCallback):
                decode(KEY, altered)


def test_other_key_rejected() -> None:
    data = encode(KEY, Action.PICK, 1, 1)
    with pytest.raises(InvalidCallback):
        decode(OTHER_KEY, data)


@pytest.mark.parametrize(
    "data",
    [None, "", "p", "p1.1", "p1.1.", "P1.1.AAAAAAAAAAA", "z1.1.AAAAAAAAAAA", "p-1.1.AAAAAAAAAAA", "p1.1.AAAAAAAAAAA=", "😀" * 16],
)
def test_malformed_rejected(data: str | None) -> None:
    with pytest.raises(InvalidCallback):
        decode(KEY, data)


def test_non_canonical_integer_rejected() -> None:
    """Leading zeros would give a second spelling of a signed id; only the signed spelling verifies."""
    data = encode(KEY, Action.PICK, 5, 2)
    with pytest.raises(InvalidCallback):
        decode(KEY, data.replace("p5.", "p05.", 1))


def test_out_of_range_integers_rejected_at_encode() -> None:
    with pytest.raises(ValueError):
        encode(KEY, Action.PICK, -1, 0)
    with pytest.raises(ValueError):
        encode(KEY, Action.PICK, 0, MAX_INTEGER + 1)


def test_binding_must_match() -> None:
    data = encode(KEY, Action.PICK, 41, 3, binding="1001:5")
    assert decode(KEY, data, binding="1001:5").argument == 3
    for other in ["", "1001:6", "1002:5"]:
        with pytest.raises(InvalidCallback):
            decode(KEY, data, binding=other)


def test_key_from_secret_differs_from_token_key() -> None:
    token = SecretStr("123456:test-token")
    assert signing_key(SecretStr("s3cret"), token) != signing_key(None, token)
    assert signing_key(None, token) != signing_key(None, SecretStr("123456:other-token"))
    # An empty CALLBACK_SECRET counts as unset.
    assert signing_key(SecretStr(""), token) == signing_key(None, token)


def test_signer_repr_hides_key() -> None:
    signer = CallbackSigner(KEY)
    assert KEY.hex() not in repr(signer)
    assert "hidden" in repr(signer)


def test_action_pattern_matches_only_its_actions() -> None:
    pattern = action_pattern(FEEDBACK_ACTIONS)
    for action in Action:
        data = encode(KEY, action, 1, 1)
        assert bool(pattern.match(data)) == (action in FEEDBACK_ACTIONS), action
