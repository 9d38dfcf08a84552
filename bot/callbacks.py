"""Signed, compact callback data for inline buttons.

Telegram returns a button's `callback_data` verbatim when it is pressed, and any client can
send arbitrary data instead, so every button the bot sends carries a truncated HMAC over
its contents and the server verifies it before acting. The Bot API limits callback data to
1-64 bytes (https://core.telegram.org/bots/api#inlinekeyboardbutton).

Layout, ASCII only: `<action><subject>.<argument>.<signature>`

- `action`: one character from `Action`;
- `subject`: the prediction id (or, for account actions, the Telegram user id) in base 36;
- `argument`: a non-negative integer in base 36 (label index, page number, issue minute, ...);
- `signature`: the first 8 bytes of HMAC-SHA256(key, "action|subject|argument|binding"),
  base64url without padding (11 characters). `binding` is not sent: the server supplies it
  from its own records when it verifies (for predictions, `prediction_binding`).

The largest payload, a subject of 2**63 - 1 and an argument of 2**63 - 1, takes
1 + 13 + 1 + 13 + 1 + 11 = 40 bytes.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass

from pydantic import SecretStr

logger = logging.getLogger(__name__)

MAX_CALLBACK_BYTES = 64
SIGNATURE_BYTES = 8
MAX_INTEGER = 2**63 - 1  # the signed 64-bit range of SQL integer ids

# Context string for deriving the signing key from the bot token, so the derived key
# differs from the token itself and from keys derived for other purposes.
_KEY_DERIVATION_LABEL = b"flowerbot callback-data signing key v1"


class Action(enum.StrEnum):
    """The operation a button triggers. Each value is the one-character prefix of its callback data."""

    # Feedback under an answer; the subject is the prediction id.
    PICK = "p"  # argument: label index recorded as the right species
    NOT_FLOWER = "x"  # argument: unused (0)
    UNKNOWN_SPECIES = "u"  # a flower of none of the model's species; argument: unused (0)
    NONE_OF_THESE = "n"  # argument: page of further candidates
    TYPE_NAME = "t"  # argument: unused (0)
    CANCEL_TYPING = "q"  # argument: unused (0)
    CHANGE = "c"  # argument: unused (0)
    BACK = "b"  # argument: unused (0)
    # Account actions; the subject is the Telegram user id.
    FORGET_CONFIRM = "f"  # argument: minute (Unix time // 60) the question was asked
    FORGET_CANCEL = "k"  # argument: same as FORGET_CONFIRM
    # Reserved for the reference-photo and species-card buttons under an answer;
    # the subject is the prediction id and the argument the label index.
    REFERENCE_PHOTOS = "r"
    SPECIES_CARD = "s"


FEEDBACK_ACTIONS = frozenset(
    {
        Action.PICK,
        Action.NOT_FLOWER,
        Action.UNKNOWN_SPECIES,
        Action.NONE_OF_THESE,
        Action.TYPE_NAME,
        Action.CANCEL_TYPING,
        Action.CHANGE,
        Action.BACK,
    }
)
FORGET_ACTIONS = frozenset({Action.FORGET_CONFIRM, Action.FORGET_CANCEL})

_CALLBACK_RE = re.compile(r"^(?P<action>[a-z])(?P<subject>[0-9a-z]{1,13})\.(?P<argument>[0-9a-z]{1,13})\.(?P<signature>[A-Za-z0-9_-]{11})$")


def action_pattern(actions: frozenset[Action]) -> re.Pattern[str]:
    """Return a regex that matches callback data whose first character is one of `actions`.

    Handlers use it as their `CallbackQueryHandler` pattern. It looks only at the action,
    so forged data with a valid action still reaches the handler, which then rejects it.
    """
    characters = "".join(sorted(action.value for action in actions))
    return re.compile(rf"^[{re.escape(characters)}]")


@dataclass(frozen=True, slots=True)
class CallbackData:
    """A verified button press."""

    action: Action
    subject: int
    argument: int


class InvalidCallback(ValueError):
    """Callback data that is malformed, unknown, or whose signature does not verify."""


def signing_key(callback_secret: SecretStr | None, bot_token: SecretStr) -> bytes:
    """Return the HMAC key: CALLBACK_SECRET when set, else a key derived from the bot token.

    A key derived from the token keeps buttons valid across restarts. Neither secret is logged.
    """
    if callback_secret is not None and callback_secret.get_secret_value():
        return hashlib.sha256(callback_secret.get_secret_value().encode()).digest()
    return hmac.new(bot_token.get_secret_value().encode(), _KEY_DERIVATION_LABEL, hashlib.sha256).digest()


def _to_base36(value: int) -> str:
    if value < 0 or value > MAX_INTEGER:
        raise ValueError(f"callback integers must be in [0, 2**63 - 1], got {value}")
    if value == 0:
        return "0"
    digits = []
    while value:
        value, remainder = divmod(value, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[remainder])
    return "".join(reversed(digits))


def _signature(key: bytes, action: str, subject: str, argument: str, binding: str) -> str:
    message = f"{action}|{subject}|{argument}|{binding}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def prediction_binding(prediction: object) -> str:
    """Return the value that ties a signature to one prediction row: its chat and photo message.

    SQLite may give a deleted row's id to the next row, so an old button must not verify
    against a newer prediction that took over its id. `(chat_id, message_id)` is unique
    per prediction and never reused by Telegram within a chat.
    """
    return f"{prediction.chat_id}:{prediction.message_id}"  # type: ignore[attr-defined]


def encode(key: bytes, action: Action, subject: int, argument: int = 0, *, binding: str = "") -> str:
    """Build signed callback data for `action` on `subject` with `argument`.

    `binding` is signed but not sent: the server must supply the same value to verify,
    which ties the button to state the server stores (see `prediction_binding`).
    """
    subject_text = _to_base36(subject)
    argument_text = _to_base36(argument)
    signature = _signature(key, action.value, subject_text, argument_text, binding)
    data = f"{action.value}{subject_text}.{argument_text}.{signature}"
    # The layout keeps data far below the limit; this guards future changes to it.
    if len(data.encode("utf-8")) > MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data is {len(data.encode('utf-8'))} bytes, over the {MAX_CALLBACK_BYTES}-byte limit")
    return data


@dataclass(frozen=True, slots=True)
class UnverifiedCallback:
    """Callback data that parsed, before its signature is checked. Act on nothing in it but `subject` lookups."""

    action: Action
    subject: int
    argument: int
    signature: str
    subject_text: str
    argument_text: str


def parse(data: str | None) -> UnverifiedCallback:
    """Split callback data into its fields, raising `InvalidCallback` when it is malformed."""
    if not data:
        raise InvalidCallback("empty callback data")
    match = _CALLBACK_RE.match(data)
    if match is None:
        raise InvalidCallback("malformed callback data")
    try:
        action = Action(match["action"])
    except ValueError as error:
        raise InvalidCallback(f"unknown action {match['action']!r}") from error
    subject = int(match["subject"], 36)
    argument = int(match["argument"], 36)
    if subject > MAX_INTEGER or argument > MAX_INTEGER:
        raise InvalidCallback("integer out of range")
    # Only the canonical base-36 form is ever signed, so "007" and "7" cannot both verify.
    if _to_base36(subject) != match["subject"] or _to_base36(argument) != match["argument"]:
        raise InvalidCallback("non-canonical integer")
    return UnverifiedCallback(action, subject, argument, match["signature"], match["subject"], match["argument"])


def verify(key: bytes, parsed: UnverifiedCallback, *, binding: str = "") -> CallbackData:
    """Check the signature of parsed callback data, raising `InvalidCallback` when it does not verify."""
    expected = _signature(key, parsed.action.value, parsed.subject_text, parsed.argument_text, binding)
    if not hmac.compare_digest(parsed.signature, expected):
        raise InvalidCallback("signature does not verify")
    return CallbackData(action=parsed.action, subject=parsed.subject, argument=parsed.argument)


def decode(key: bytes, data: str | None, *, binding: str = "") -> CallbackData:
    """Parse and verify callback data, raising `InvalidCallback` when it is not one the bot signed."""
    return verify(key, parse(data), binding=binding)


class CallbackSigner:
    """Encodes and verifies callback data with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: object) -> CallbackSigner:
        """Build a signer from `Settings.callback_secret`, or from the bot token when that is unset."""
        return cls(signing_key(getattr(settings, "callback_secret", None), settings.telegram_bot_token))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return "CallbackSigner(key=<hidden>)"

    def encode(self, action: Action, subject: int, argument: int = 0, *, binding: str = "") -> str:
        """Build signed callback data; see `encode`."""
        return encode(self._key, action, subject, argument, binding=binding)

    def verify(self, parsed: UnverifiedCallback, *, binding: str = "") -> CallbackData:
        """Check parsed callback data; see `verify`."""
        return verify(self._key, parsed, binding=binding)

    def decode(self, data: str | None, *, binding: str = "") -> CallbackData:
        """Parse and verify callback data; see `decode`."""
        return decode(self._key, data, binding=binding)


_SIGNER_KEY = "callback_signer"


def get_signer(bot_context: object) -> CallbackSigner:
    """Return the signer kept in `bot_context.extras`, creating it from the settings on first use."""
    extras: dict = bot_context.extras  # type: ignore[attr-defined]
    signer = extras.get(_SIGNER_KEY)
    if signer is None:
        signer = CallbackSigner.from_settings(bot_context.settings)  # type: ignore[attr-defined]
        extras[_SIGNER_KEY] = signer
    return signer
