"""A local Telegram Bot API server for tests.

`TelegramEmulator` is an aiohttp server on 127.0.0.1 that implements the Bot API methods
flowerbot calls, closely enough that python-telegram-bot's `Bot` and `Application` run
against it unchanged through `base_url` and `base_file_url`. Tests queue updates with the
`send_*` and `press_button` helpers (what a person would do in a Telegram client), then read
what the bot did from `sent_messages`, `calls` and the stored messages.

Request and response shapes follow https://core.telegram.org/bots/api#making-requests:
parameters arrive as a query string, a URL-encoded or multipart form (where python-telegram-bot
JSON-encodes every non-string value), or a JSON body. Each response is `{"ok": true, "result": ...}`
or `{"ok": false, "error_code": ..., "description": ...}` with the HTTP status of the error code.

Usage:

    async with TelegramEmulator() as emulator:
        bot = telegram.Bot(emulator.token, base_url=emulator.base_url, base_file_url=emulator.base_file_url)
        person = make_user(1001, language_code="en")
        photo_message = emulator.send_photo(person, None, jpeg_bytes)
        reply = await emulator.wait_for_reply(photo_message)

Waiting is event based: `wait_for*` return as soon as the emulator's state satisfies the
condition and raise `TimeoutError` (with a summary of the recent calls) when it never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import itertools
import json
import logging
import re
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, web

logger = logging.getLogger(__name__)

T = TypeVar("T")
JSON = dict[str, Any]

DEFAULT_TOKEN = "123456789:AAEmulatorTestTokenForFlowerbotTests0"
BOT_USER_ID = 123456789

# Limits documented in the Bot API (https://core.telegram.org/bots/api).
MAX_MESSAGE_TEXT = 4096  # characters, sendMessage
MAX_CAPTION = 1024  # characters, captions of media
MAX_CALLBACK_DATA_BYTES = 64  # InlineKeyboardButton.callback_data
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile only serves files up to 20 MB
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # multipart uploads of bots
COMMAND_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")  # BotCommand.command
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Telegram marks `/command` and `/command@bot` anywhere in a text or caption as a bot_command entity.
BOT_COMMAND_PATTERN = re.compile(r"(?<![\w/])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?")
# The long sides Telegram scales photo thumbnails to (its `s`, `m` and `x` sizes).
THUMBNAIL_SIDES = (90, 320, 800)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Form parameters that are strings by definition. python-telegram-bot sends strings raw and
# JSON-encodes everything else, so only these are kept verbatim; the rest are JSON-decoded.
STRING_PARAMETERS = frozenset(
    {
        "text",
        "caption",
        "callback_query_id",
        "file_id",
        "action",
        "language_code",
        "url",
        "secret_token",
        "parse_mode",
        "description",
        "short_description",
        "name",
        "ip_address",
        "inline_message_id",
        "photo",
        "document",
        "video",
        "audio",
        "voice",
        "sticker",
        "animation",
        "thumbnail",
        "business_connection_id",
        "message_effect_id",
        "emoji",
        "title",
        "address",
        "query",
        "certificate",
    }
)
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)


class BotApiError(Exception):
    """An error response of the Bot API: an HTTP status with `{"ok": false, ...}`."""

    def __init__(self, error_code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(f"{error_code} {description}")
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def to_json(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(detail: str) -> BotApiError:
    return BotApiError(400, f"Bad Request: {detail}")


@dataclass
class ApiCall:
    """One Bot API request the emulator received, with its decoded parameters and its response."""

    method: str
    params: JSON
    # Uploaded multipart files by part name: (file name, content type, bytes).
    files: dict[str, tuple[str, str, bytes]]
    status: int = 0
    response: JSON = field(default_factory=dict)
    time: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))


@dataclass
class StoredFile:
    """A file the emulator serves through getFile and the file download path."""

    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    # The size reported in updates and by getFile; tests may declare a size larger than `data`.
    file_size: int


@dataclass
class _Fault:
    error: BotApiError
    remaining: int


def make_user(
    user_id: int,
    first_name: str = "Test",
    *,
    language_code: str | None = "en",
    username: str | None = None,
    last_name: str | None = None,
) -> JSON:
    """Return a Telegram `User` object for a person (not a bot)."""
    user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
    if last_name:
        user["last_name"] = last_name
    if username:
        user["username"] = username
    if language_code is not None:
        user["language_code"] = language_code
    return user


def private_chat(user: JSON) -> JSON:
    """Return the private `Chat` between the bot and `user`; its id equals the user id."""
    chat: JSON = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
    if "username" in user:
        chat["username"] = user["username"]
    return chat


def group_chat(chat_id: int, title: str = "Flower friends", *, supergroup: bool = True) -> JSON:
    """Return a group `Chat`; group ids are negative (supergroups start with -100)."""
    if chat_id >= 0:
        raise ValueError(f"group chat ids are negative, got {chat_id}")
    return {"id": chat_id, "type": "supergroup" if supergroup else "group", "title": title}


def utf16_length(text: str) -> int:
    """Return the length of `text` in UTF-16 code units, the unit of Telegram entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def command_entities(text: str) -> list[JSON]:
    """Return the bot_command entities Telegram would attach to `text`."""
    entities = []
    for match in BOT_COMMAND_PATTERN.finditer(text):
        entities.append(
            {
                "type": "bot_command",
                "offset": utf16_length(text[: match.start()]),
                "length": utf16_length(match.group()),
            }
        )
    return entities


def inline_buttons(message: JSON) -> list[JSON]:
    """Return the inline keyboard buttons of a message, row by row, as one flat list."""
    markup = message.get("reply_markup") or {}
    return [button for row in markup.get("inline_keyboard", []) for button in row]


def message_text(message: JSON) -> str:
    """Return a message's text, or its caption for media messages, or an empty string."""
    return message.get("text") or message.get("caption") or ""


class TelegramEmulator:
    """A Telegram Bot API server on 127.0.0.1 with helpers that act as the people using the bot.

    State is plain Bot API JSON: users, chats and messages are dicts in the shapes Telegram
    sends. Messages the bot sent are kept in `sent_messages` and are updated in place by
    edits. Every request is logged in `calls`.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "flowerbot_test_bot",
        bot_first_name: str = "Flowerbot",
    ) -> None:
        self.token = token
        self.bot_user: JSON = {
            "id": int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else BOT_USER_ID,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[ApiCall] = []
        # Calls to methods the emulator does not implement (they got a 404 response).
        self.unknown_calls: list[ApiCall] = []
        # Commands set with setMyCommands, by (scope as canonical JSON, language code).
        self.commands: dict[tuple[str, str], list[JSON]] = {}
        # Answers to callback queries, by callback query id: the answerCallbackQuery parameters.
        self.callback_answers: dict[str, JSON] = {}
        # Webhook deliveries: (update_id, HTTP status or 0 when the connection failed).
        self.webhook_deliveries: list[tuple[int, int]] = []
        self.webhook: JSON | None = None
        # Messages removed with deleteMessage, as (chat_id, message_id).
        self.deleted_messages: set[tuple[int, int]] = set()

        self._pending_updates: list[JSON] = []
        self._update_ids = itertools.count(10_001)
        self._message_ids: dict[int, itertools.count] = defaultdict(lambda: itertools.count(1))
        self._messages: dict[tuple[int, int], JSON] = {}
        self._sent: list[JSON] = []
        self._chats: dict[int, JSON] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._file_numbers = itertools.count(1)
        self._callback_ids = itertools.count(900_001)
        self._media_group_ids = itertools.count(5_000_001)
        self._callback_queries: dict[str, JSON] = {}
        self._blocked_chats: set[int] = set()
        self._faults: dict[str, deque[_Fault]] = defaultdict(deque)
        self._poll_generation = 0
        self._closing = False
        self._waiters: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._methods: dict[str, Callable[[JSON, dict[str, tuple[str, str, bytes]]], Any]] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "editmessagecaption": self._edit_message_caption,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "answercallbackquery": self._answer_callback_query,
            "sendchataction": self._send_chat_action,
            "getfile": self._get_file,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "sendmediagroup": self._send_media_group,
            "deletemessage": self._delete_message,
            "close": self._close,
            "logout": self._log_out,
        }

    # ------------------------------------------------------------------ server lifecycle

    async def start(self) -> None:
        """Start serving on 127.0.0.1 at a free port chosen by the operating system."""
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._handle_file)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        logger.info("Telegram emulator listening on 127.0.0.1:%d", self._port)

    async def stop(self) -> None:
        """Release waiting long polls, stop webhook delivery and close the server."""
        self._closing = True
        self._notify()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("Telegram emulator stopped")

    async def __aenter__(self) -> TelegramEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The value for `TELEGRAM_BASE_URL` (python-telegram-bot appends the token)."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """The value for `TELEGRAM_BASE_FILE_URL` (python-telegram-bot appends the token)."""
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ------------------------------------------------------------------ HTTP handlers

    async def _handle_method(self, request: web.Request) -> web.Response:
        method_name = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        try:
            params, files = await self._read_parameters(request)
        except ValueError as error:
            return web.json_response(bad_request(str(error)).to_json(), status=400)

        call = ApiCall(method=method_name, params=params, files=files)
        self.calls.append(call)
        handler = self._methods.get(method_name.lower())
        try:
            if handler is None:
                self.unknown_calls.append(call)
                raise BotApiError(404, "Not Found: method not found")
            self._raise_injected_fault(method_name)
            self._raise_if_blocked(params)
            result = handler(params, files)
            if asyncio.iscoroutine(result):
                result = await result
            body: JSON = {"ok": True, "result": result}
            status = 200
        except BotApiError as error:
            body = error.to_json()
            status = error.error_code
        call.status = status
        call.response = body
        if status != 200:
            logger.info("emulator answered %s with %d: %s", method_name, status, body.get("description"))
        self._notify()
        return web.json_response(body, status=status)

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        stored = self._files_by_path.get(request.match_info["file_path"])
        if stored is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _read_parameters(self, request: web.Request) -> tuple[JSON, dict[str, tuple[str, str, bytes]]]:
        """Decode query, form, multipart or JSON parameters the way the Bot API accepts them."""
        params: JSON = {name: _decode_form_value(name, value) for name, value in request.query.items()}
        files: dict[str, tuple[str, str, bytes]] = {}
        if request.method != "POST" or not request.can_read_body:
            return params, files

        content_type = request.content_type
        if content_type == "application/json":
            raw = await request.read()
            if raw.strip():
                try:
                    decoded = json.loads(raw)
                except json.JSONDecodeError as error:
                    raise ValueError(f"can't parse JSON body: {error}") from error
                if not isinstance(decoded, dict):
                    raise ValueError("the JSON body must be an object")
                params.update(decoded)
        elif content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.name is None:
                    continue
                if part.filename is not None:
                    data = await part.read(decode=False)
                    part_type = part.headers.get("Content-Type", "application/octet-stream")
                    files[part.name] = (part.filename, part_type, bytes(data))
                else:
                    params[part.name] = _decode_form_value(part.name, await part.text())
        else:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, str):
                    params[name] = _decode_form_value(name, value)
        return params, files

    # ------------------------------------------------------------------ fault injection

    def block_user(self, chat_id: int) -> None:
        """Make every method aimed at `chat_id` fail with 403, as when a person blocked the bot.

        For a group id (negative) the 403 says the bot was removed from the group.
        """
        self._blocked_chats.add(chat_id)

    def unblock_user(self, chat_id: int) -> None:
        self._blocked_chats.discard(chat_id)

    def inject_retry_after(self, method: str, seconds: int, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with 429 and `parameters.retry_after`."""
        error = BotApiError(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})
        self._faults[method.lower()].append(_Fault(error, times))

    def inject_error(self, method: str, error_code: int, description: str, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with an arbitrary Bot API error."""
        self._faults[method.lower()].append(_Fault(BotApiError(error_code, description), times))

    def _raise_injected_fault(self, method: str) -> None:
        faults = self._faults.get(method.lower())
        if not faults:
            return
        fault = faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            faults.popleft()
        raise fault.error

    def _raise_if_blocked(self, params: JSON) -> None:
        chat_id = params.get("chat_id")
        if isinstance(chat_id, int) and chat_id in self._blocked_chats:
            if chat_id < 0:
                raise BotApiError(403, "Forbidden: bot was kicked from the supergroup chat")
            raise BotApiError(403, "Forbidden: bot was blocked by the user")

    # ------------------------------------------------------------------ people's actions

    def add_chat(self, chat: JSON) -> None:
        """Make a chat known, so the bot may send to it before it receives anything from it."""
        self._chats[chat["id"]] = chat

    def send_text(
        self, user: JSON, chat: JSON | None, text: str, *, reply_to: JSON | None = None, deliver: bool = True
    ) -> JSON:
        """Queue a text message from `user` (with bot_command entities like Telegram) and return it."""
        content: JSON = {"text": text}
        entities = command_entities(text)
        if entities:
            content["entities"] = entities
        return self._queue_message(user, chat, content, reply_to=reply_to, deliver=deliver)

    def send_command(
        self, user: JSON, chat: JSON | None, command: str, args: str = "", *, reply_to: JSON | None = None
    ) -> JSON:
        """Queue `/command args` from `user`; `command` may be given with or without the slash."""
        text = "/" + command.lstrip("/")
        if args:
            text += " " + args
        return self.send_text(user, chat, text, reply_to=reply_to)

    def send_photo(
        self,
        user: JSON,
        chat: JSON | None,
        image_bytes: bytes,
        *,
        caption: str | None = None,
        reply_to: JSON | None = None,
        media_group_id: str | None = None,
        deliver: bool = True,
    ) -> JSON:
        """Queue a photo message and return it.

        Like Telegram, the message carries several `PhotoSize` entries, smallest first:
        JPEG thumbnails scaled to the long sides in `THUMBNAIL_SIDES` that are smaller than
        the image, then the image itself. The last entry serves `image_bytes` unchanged, so a
        test can compare hashes. Bytes that Pillow can't decode get the last entry only.
        """
        content: JSON = {"photo": self._photo_sizes(image_bytes)}
        self._add_caption(content, caption)
        if media_group_id is not None:
            content["media_group_id"] = media_group_id
        return self._queue_message(user, chat, content, reply_to=reply_to, deliver=deliver)

    def send_album(self, user: JSON, chat: JSON | None, images: Iterable[bytes], *, caption: str | None = None) -> list[JSON]:
        """Queue photos that share one `media_group_id`, as Telegram delivers an album.

        The caption, when given, goes on the first photo, as Telegram clients put it.
        """
        media_group_id = str(next(self._media_group_ids))
        messages = []
        for position, image in enumerate(images):
            messages.append(
                self.send_photo(
                    user, chat, image, caption=caption if position == 0 else None, media_group_id=media_group_id
                )
            )
        return messages

    def send_document(
        self,
        user: JSON,
        chat: JSON | None,
        data: bytes,
        file_name: str,
        mime_type: str | None = None,
        *,
        caption: str | None = None,
        reply_to: JSON | None = None,
        declared_size: int | None = None,
        media_group_id: str | None = None,
        deliver: bool = True,
    ) -> JSON:
        """Queue a file sent as a document and return the message.

        `declared_size` overrides the `file_size` Telegram reports, so a test can act out a
        file over the 20 MB getFile limit without building one. getFile then fails as on Telegram.
        """
        stored = self._store_file(data, f"documents/file_{next(self._file_numbers)}{_suffix(file_name)}", declared_size)
        document: JSON = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "file_size": stored.file_size,
        }
        if mime_type is not None:
            document["mime_type"] = mime_type
        content: JSON = {"document": document}
        self._add_caption(content, caption)
        if media_group_id is not None:
            content["media_group_id"] = media_group_id
        return self._queue_message(user, chat, content, reply_to=reply_to, deliver=deliver)

    def send_sticker(self, user: JSON, chat: JSON | None, emoji: str = "🌼") -> JSON:
        """Queue a static sticker message and return it."""
        stored = self._store_file(b"RIFF\x00\x00\x00\x00WEBPVP8 ", f"stickers/file_{next(self._file_numbers)}.webp")
        sticker = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "file_size": stored.file_size,
        }
        return self._queue_message(user, chat, {"sticker": sticker})

    def send_video(self, user: JSON, chat: JSON | None, data: bytes = b"\x00\x00\x00\x18ftypmp42", *, caption: str | None = None) -> JSON:
        """Queue a video message and return it."""
        stored = self._store_file(data, f"videos/file_{next(self._file_numbers)}.mp4")
        video = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "width": 640,
            "height": 360,
            "duration": 3,
            "mime_type": "video/mp4",
            "file_size": stored.file_size,
        }
        content: JSON = {"video": video}
        self._add_caption(content, caption)
        return self._queue_message(user, chat, content)

    def send_voice(self, user: JSON, chat: JSON | None, data: bytes = b"OggS\x00\x02") -> JSON:
        """Queue a voice message and return it."""
        stored = self._store_file(data, f"voice/file_{next(self._file_numbers)}.oga")
        voice = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "duration": 2,
            "mime_type": "audio/ogg",
            "file_size": stored.file_size,
        }
        return self._queue_message(user, chat, {"voice": voice})

    def send_location(self, user: JSON, chat: JSON | None, latitude: float = 51.75, longitude: float = -1.26) -> JSON:
        """Queue a location message and return it."""
        return self._queue_message(user, chat, {"location": {"latitude": latitude, "longitude": longitude}})

    def send_edited_message(self, user: JSON, chat: JSON | None, message: JSON, text: str) -> JSON:
        """Queue an `edited_message` update: `message` (sent earlier by `user`) with new text."""
        key = (message["chat"]["id"], message["message_id"])
        edited = copy.deepcopy(self._messages.get(key, message))
        edited["edit_date"] = int(time.time())
        if "caption" in edited:
            edited["caption"] = text
            edited.pop("caption_entities", None)
            if entities := command_entities(text):
                edited["caption_entities"] = entities
        else:
            edited["text"] = text
            edited.pop("entities", None)
            if entities := command_entities(text):
                edited["entities"] = entities
        self._messages[key] = edited
        self._queue_update({"edited_message": edited})
        return edited

    def press_button(
        self,
        user: JSON,
        chat: JSON | None,
        message: JSON | int,
        callback_data: str,
        *,
        require_button: bool = True,
    ) -> JSON:
        """Queue a `callback_query` for a press on an inline button of a bot message; return the query.

        `message` is the bot's message dict or its id in `chat`. With `require_button=False`
        the data need not belong to a button, which acts out a client that forges callback data.
        """
        chat = chat or private_chat(user)
        message_id = message if isinstance(message, int) else message["message_id"]
        stored = self._messages.get((chat["id"], message_id))
        if stored is None:
            raise ValueError(f"message {message_id} is not in chat {chat['id']}")
        if require_button:
            known = [button.get("callback_data") for button in inline_buttons(stored)]
            if callback_data not in known:
                raise ValueError(f"message {message_id} has no button with callback_data {callback_data!r}: {known}")
        query_id = str(next(self._callback_ids))
        query = {
            "id": query_id,
            "from": user,
            "message": copy.deepcopy(stored),
            "chat_instance": str(abs(hash(("chat_instance", chat["id"])))),
            "data": callback_data,
        }
        self._callback_queries[query_id] = query
        self._chats.setdefault(chat["id"], chat)
        self._queue_update({"callback_query": query})
        return query

    def queue_update(self, payload: JSON) -> int:
        """Queue a raw update body such as `{"message": {...}}`; return its update_id."""
        return self._queue_update(payload)

    # ------------------------------------------------------------------ inspection

    def sent_messages(self, chat_id: int | None = None) -> list[JSON]:
        """Return the messages the bot sent (to `chat_id` when given), oldest first, with edits applied.

        Deleted messages are left out.
        """
        return [
            message
            for message in self._sent
            if (chat_id is None or message["chat"]["id"] == chat_id)
            and (message["chat"]["id"], message["message_id"]) not in self.deleted_messages
        ]

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        """Return the current state of any message in a chat, or None when it does not exist."""
        return self._messages.get((chat_id, message_id))

    def replies_to(self, message: JSON) -> list[JSON]:
        """Return the bot's messages that reply to `message`, oldest first."""
        chat_id = message["chat"]["id"]
        return [
            sent
            for sent in self.sent_messages(chat_id)
            if (sent.get("reply_to_message") or {}).get("message_id") == message["message_id"]
        ]

    def calls_to(self, method: str) -> list[ApiCall]:
        """Return the logged calls of `method` (case-insensitive), oldest first."""
        return [call for call in self.calls if call.method.lower() == method.lower()]

    def chat_actions(self, chat_id: int) -> list[str]:
        """Return the chat actions the bot sent to `chat_id`, in order."""
        return [call.params.get("action", "") for call in self.calls_to("sendChatAction") if call.ok and call.params.get("chat_id") == chat_id]

    def commands_for(self, language_code: str = "", scope: JSON | None = None) -> list[JSON] | None:
        """Return the commands set for a language and scope, or None when none were set."""
        return self.commands.get((_scope_key(scope), language_code))

    def file_bytes(self, file_id: str) -> bytes:
        """Return the content of a stored file by its file_id."""
        return self._files[file_id].data

    @property
    def pending_update_count(self) -> int:
        return len(self._pending_updates)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self,
        condition: int | Callable[[], T],
        *,
        chat_id: int | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """Wait until a condition is met and return its value.

        `condition` is either a count (return the bot's sent messages, to `chat_id` when given,
        once there are at least that many) or a callable taking no arguments (return its
        result once that is truthy). The callable is evaluated after every request the bot makes.
        """
        if isinstance(condition, int):
            count = condition

            def check() -> Any:
                messages = self.sent_messages(chat_id)
                return messages if len(messages) >= count else None

            description = f"{count} sent message(s)" + (f" in chat {chat_id}" if chat_id is not None else "")
        else:
            check = condition
            description = getattr(condition, "__name__", "condition")
        return await self._wait(check, timeout, description)

    async def wait_for_reply(self, message: JSON, *, timeout: float = 30.0) -> JSON:
        """Wait for the bot's first message that replies to `message` and return it."""

        def first_reply() -> JSON | None:
            replies = self.replies_to(message)
            return replies[0] if replies else None

        return await self._wait(first_reply, timeout, f"a reply to message {message['message_id']}")

    async def wait_for_response(self, message: JSON, *, timeout: float = 30.0) -> JSON:
        """Wait for the bot's first message in the chat of `message` sent after it, reply or not, and return it."""
        chat_id = message["chat"]["id"]

        def first_later() -> JSON | None:
            later = [sent for sent in self.sent_messages(chat_id) if sent["message_id"] > message["message_id"]]
            return later[0] if later else None

        return await self._wait(first_later, timeout, f"a message after message {message['message_id']} in chat {chat_id}")

    async def wait_for_call(
        self, method: str, predicate: Callable[[ApiCall], bool] | None = None, *, count: int = 1, timeout: float = 30.0
    ) -> list[ApiCall]:
        """Wait until `method` was called `count` times (matching `predicate`); return those calls."""

        def matching() -> list[ApiCall] | None:
            calls = [call for call in self.calls_to(method) if predicate is None or predicate(call)]
            return calls if len(calls) >= count else None

        return await self._wait(matching, timeout, f"{count} call(s) of {method}")

    async def wait_for_callback_answer(self, query: JSON, *, timeout: float = 30.0) -> JSON:
        """Wait until the bot answered a callback query; return the answerCallbackQuery parameters."""
        return await self._wait(lambda: self.callback_answers.get(query["id"]), timeout, f"an answer to callback query {query['id']}")

    async def wait_until_idle(self, *, timeout: float = 30.0) -> None:
        """Wait until the bot fetched every queued update (it may still be handling them)."""
        await self._wait(lambda: self.pending_update_count == 0 or None, timeout, "all updates fetched")

    async def _wait(self, check: Callable[[], T], timeout: float, description: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = ", ".join(f"{call.method}({call.status})" for call in self.calls[-15:])
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {description}; last calls: {recent}")
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _wait_for_change(self, timeout: float) -> None:
        if timeout <= 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # ------------------------------------------------------------------ building blocks

    def _queue_update(self, payload: JSON) -> int:
        update_id = next(self._update_ids)
        self._pending_updates.append({"update_id": update_id, **payload})
        self._notify()
        return update_id

    def _queue_message(
        self, user: JSON, chat: JSON | None, content: JSON, *, reply_to: JSON | None = None, deliver: bool = True
    ) -> JSON:
        """Add a message to its chat and, when `deliver`, queue it as an update for the bot.

        `deliver=False` acts out a message the bot never receives, as in a group where the
        bot's privacy mode hides messages that do not address it.
        """
        chat = chat or private_chat(user)
        message = self._new_message(chat, user, content, reply_to=reply_to)
        if deliver:
            self._queue_update({"message": message})
        return message

    def _new_message(self, chat: JSON, sender: JSON, content: JSON, *, reply_to: JSON | None = None) -> JSON:
        self._chats.setdefault(chat["id"], chat)
        message: JSON = {
            "message_id": next(self._message_ids[chat["id"]]),
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        if reply_to is not None:
            # Telegram nests the replied-to message one level deep only.
            replied = copy.deepcopy(reply_to)
            replied.pop("reply_to_message", None)
            message["reply_to_message"] = replied
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    def _add_caption(self, content: JSON, caption: str | None) -> None:
        if caption is None:
            return
        content["caption"] = caption
        if entities := command_entities(caption):
            content["caption_entities"] = entities

    def _store_file(self, data: bytes, file_path: str, declared_size: int | None = None) -> StoredFile:
        number = next(self._file_numbers)
        digest = hashlib.sha256(data).hexdigest()
        stored = StoredFile(
            file_id=f"BQACAgIAAxkBAAE{number:08d}{digest[:24]}",
            file_unique_id=f"AQAD{digest[:16]}",
            data=data,
            file_path=file_path,
            file_size=len(data) if declared_size is None else declared_size,
        )
        self._files[stored.file_id] = stored
        self._files_by_path[file_path] = stored
        return stored

    def _photo_sizes(self, image_bytes: bytes) -> list[JSON]:
        sizes = []
        dimensions = (0, 0)
        try:
            from PIL import Image, ImageOps

            with Image.open(io.BytesIO(image_bytes)) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                dimensions = image.size
                for side in THUMBNAIL_SIDES:
                    if side >= max(image.size):
                        break
                    thumbnail = _flatten_to_rgb(image.copy())
                    thumbnail.thumbnail((side, side))
                    buffer = io.BytesIO()
                    thumbnail.save(buffer, format="JPEG", quality=80)
                    stored = self._store_file(buffer.getvalue(), f"photos/file_{next(self._file_numbers)}.jpg")
                    sizes.append(_photo_size(stored, thumbnail.size))
        except Exception as error:  # noqa: BLE001 - any undecodable upload becomes a single-size photo
            logger.debug("photo thumbnails skipped: %r", error)
            sizes = []
        original = self._store_file(image_bytes, f"photos/file_{next(self._file_numbers)}.jpg")
        sizes.append(_photo_size(original, dimensions))
        return sizes

    def _file_from_parameter(self, name: str, params: JSON, files: dict[str, tuple[str, str, bytes]]) -> tuple[StoredFile, str, str] | None:
        """Resolve a file parameter: an upload under `name`, an `attach://` part, or a file_id.

        Returns the stored file with its file name and content type, or None when absent.
        """
        if name in files:
            file_name, content_type, data = files[name]
        else:
            value = params.get(name)
            if value is None:
                return None
            if not isinstance(value, str):
                raise bad_request(f"wrong type of the {name} field")
            if value.startswith("attach://"):
                part = value.removeprefix("attach://")
                if part not in files:
                    raise bad_request(f"can't find attached file {part!r}")
                file_name, content_type, data = files[part]
            elif value in self._files:
                stored = self._files[value]
                return stored, stored.file_path.rsplit("/", 1)[-1], "application/octet-stream"
            elif value.startswith(("http://", "https://")):
                raise bad_request("failed to get HTTP URL content: the emulator does not fetch URLs")
            else:
                raise bad_request("wrong file identifier/HTTP URL specified")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BotApiError(413, "Request Entity Too Large")
        folder = "photos" if name == "photo" else "documents"
        stored = self._store_file(data, f"{folder}/file_{next(self._file_numbers)}{_suffix(file_name)}")
        return stored, file_name, content_type

    # ------------------------------------------------------------------ shared checks

    def _chat_for(self, params: JSON) -> JSON:
        chat_id = params.get("chat_id")
        if chat_id is None:
            raise bad_request("chat_id is empty")
        if isinstance(chat_id, str) and chat_id.lstrip("-").isdigit():
            chat_id = int(chat_id)
        chat = self._chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise bad_request("chat not found")
        return chat

    def _reply_target(self, chat: JSON, params: JSON) -> JSON | None:
        reply = params.get("reply_parameters")
        message_id = reply.get("message_id") if isinstance(reply, dict) else params.get("reply_to_message_id")
        if message_id is None:
            return None
        target_chat_id = reply.get("chat_id", chat["id"]) if isinstance(reply, dict) else chat["id"]
        target = self._messages.get((target_chat_id, message_id))
        allow_missing = (reply or {}).get("allow_sending_without_reply") if isinstance(reply, dict) else None
        allow_missing = allow_missing or params.get("allow_sending_without_reply")
        if target is None and not allow_missing:
            raise bad_request("message to be replied not found")
        return target

    def _check_reply_markup(self, params: JSON) -> JSON | None:
        markup = params.get("reply_markup")
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                if not button.get("text"):
                    raise bad_request("text buttons are unallowed in the inline keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES:
                    raise bad_request("BUTTON_DATA_INVALID")
        return markup

    def _bot_message(self, chat: JSON, params: JSON, content: JSON) -> JSON:
        reply_target = self._reply_target(chat, params)
        markup = self._check_reply_markup(params)
        # Telegram returns only inline keyboards in the sent Message; ForceReply and reply
        # keyboards are applied on the client and left out of the result.
        if markup is not None and "inline_keyboard" in markup:
            content["reply_markup"] = markup
        message = self._new_message(chat, self.bot_user, content, reply_to=reply_target)
        self._sent.append(message)
        return message

    def _editable_message(self, params: JSON) -> JSON:
        if params.get("inline_message_id"):
            raise bad_request("the emulator does not support inline messages")
        chat = self._chat_for(params)
        message_id = params.get("message_id")
        if message_id is None:
            raise bad_request("message identifier is not specified")
        message = self._messages.get((chat["id"], message_id))
        if message is None or (chat["id"], message_id) in self.deleted_messages:
            raise bad_request("message to edit not found")
        if message.get("from", {}).get("id") != self.bot_user["id"]:
            raise bad_request("message can't be edited")
        return message

    # ------------------------------------------------------------------ Bot API methods

    def _get_me(self, params: JSON, files: dict) -> JSON:
        return self.bot_user

    async def _get_updates(self, params: JSON, files: dict) -> list[JSON]:
        if self.webhook is not None:
            raise BotApiError(
                409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
            )
        offset = int(params.get("offset") or 0)
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(float(params.get("timeout") or 0), 0.0)
        # An update is confirmed once getUpdates is called with an offset higher than its id.
        # A negative offset keeps only the last -offset updates.
        if offset > 0:
            self._pending_updates = [update for update in self._pending_updates if update["update_id"] >= offset]
        elif offset < 0:
            self._pending_updates = self._pending_updates[offset:]

        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        deadline = time.monotonic() + timeout
        while True:
            if generation != self._poll_generation:
                raise BotApiError(409, "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running")
            if self._pending_updates or self._closing:
                return copy.deepcopy(self._pending_updates[:limit])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._wait_for_change(remaining)

    def _delete_webhook(self, params: JSON, files: dict) -> bool:
        self.webhook = None
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            self._webhook_task = None
        if params.get("drop_pending_updates"):
            self._pending_updates.clear()
        return True

    def _set_webhook(self, params: JSON, files: dict) -> bool:
        url = params.get("url") or ""
        if not url:
            return self._delete_webhook(params, files)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
            raise bad_request("bad webhook: the emulator only delivers to http(s) URLs on 127.0.0.1 or localhost")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._pending_updates.clear()
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
            "max_connections": params.get("max_connections", 40),
            "last_error_date": None,
            "last_error_message": None,
        }
        if self._webhook_task is None or self._webhook_task.done():
            self._webhook_task = asyncio.get_running_loop().create_task(self._deliver_webhook_updates())
        return True

    def _get_webhook_info(self, params: JSON, files: dict) -> JSON:
        info: JSON = {"url": "", "has_custom_certificate": False, "pending_update_count": len(self._pending_updates)}
        if self.webhook is not None:
            info["url"] = self.webhook["url"]
            info["max_connections"] = self.webhook["max_connections"]
            if self.webhook["allowed_updates"]:
                info["allowed_updates"] = self.webhook["allowed_updates"]
            if self.webhook["last_error_date"]:
                info["last_error_date"] = self.webhook["last_error_date"]
                info["last_error_message"] = self.webhook["last_error_message"]
        return info

    async def _deliver_webhook_updates(self) -> None:
        """POST queued updates to the webhook one at a time, in order, retrying failures.

        NOTE: Telegram delivers over up to `max_connections` connections in parallel; one
        connection is enough for tests and keeps the order deterministic.
        """
        backoff = 0.05
        async with ClientSession(timeout=ClientTimeout(total=30)) as session:
            while self.webhook is not None and not self._closing:
                if not self._pending_updates:
                    await self._wait_for_change(1.0)
                    continue
                update = self._pending_updates[0]
                headers = {}
                if self.webhook.get("secret_token"):
                    headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
                try:
                    async with session.post(self.webhook["url"], json=update, headers=headers) as response:
                        status = response.status
                except (OSError, asyncio.TimeoutError) as error:
                    status = 0
                    error_message = f"Connection failed: {error!r}"
                else:
                    error_message = f"Wrong response from the webhook: {status}"
                self.webhook_deliveries.append((update["update_id"], status))
                if 200 <= status < 300:
                    if self._pending_updates and self._pending_updates[0] is update:
                        self._pending_updates.pop(0)
                    backoff = 0.05
                else:
                    if self.webhook is not None:
                        self.webhook["last_error_date"] = int(time.time())
                        self.webhook["last_error_message"] = error_message
                    logger.info("webhook delivery of update %d failed: %s", update["update_id"], error_message)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                self._notify()

    def _send_message(self, params: JSON, files: dict) -> JSON:
        chat = self._chat_for(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        if len(text) > MAX_MESSAGE_TEXT:
            raise bad_request("message is too long")
        content: JSON = {"text": text}
        if entities := params.get("entities"):
            content["entities"] = entities
        return self._bot_message(chat, params, content)

    def _edit_message_text(self, params: JSON, files: dict) -> JSON:
        message = self._editable_message(params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        if len(text) > MAX_MESSAGE_TEXT:
            raise bad_request("MESSAGE_TOO_LONG")
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        markup = self._check_reply_markup(params)
        if message["text"] == text and message.get("reply_markup") == markup:
            raise bad_request(NOT_MODIFIED)
        message["text"] = text
        # Like Telegram, an edit without reply_markup removes the inline keyboard.
        _set_or_remove(message, "reply_markup", markup)
        _set_or_remove(message, "entities", params.get("entities"))
        message["edit_date"] = int(time.time())
        return message

    def _edit_message_caption(self, params: JSON, files: dict) -> JSON:
        message = self._editable_message(params)
        caption = params.get("caption") or ""
        if len(caption) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        if "text" in message:
            raise bad_request("there is no caption in the message to edit")
        markup = self._check_reply_markup(params)
        if message.get("caption", "") == caption and message.get("reply_markup") == markup:
            raise bad_request(NOT_MODIFIED)
        _set_or_remove(message, "caption", caption or None)
        _set_or_remove(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return message

    def _edit_message_reply_markup(self, params: JSON, files: dict) -> JSON:
        message = self._editable_message(params)
        markup = self._check_reply_markup(params)
        if message.get("reply_markup") == markup:
            raise bad_request(NOT_MODIFIED)
        _set_or_remove(message, "reply_markup", markup)
        message["edit_date"] = int(time.time())
        return message

    def _answer_callback_query(self, params: JSON, files: dict) -> bool:
        query_id = params.get("callback_query_id")
        if query_id not in self._callback_queries or query_id in self.callback_answers:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        text = params.get("text")
        if text is not None and len(text) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = params
        return True

    def _send_chat_action(self, params: JSON, files: dict) -> bool:
        self._chat_for(params)
        action = params.get("action")
        if action not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    def _get_file(self, params: JSON, files: dict) -> JSON:
        stored = self._files.get(params.get("file_id") or "")
        if stored is None:
            raise bad_request("invalid file_id")
        if stored.file_size > MAX_DOWNLOAD_BYTES:
            raise bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    def _set_my_commands(self, params: JSON, files: dict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be a list of at most 100 BotCommand objects")
        for command in commands:
            name = command.get("command", "") if isinstance(command, dict) else ""
            description = command.get("description", "") if isinstance(command, dict) else ""
            if not COMMAND_PATTERN.fullmatch(name):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        language_code = params.get("language_code") or ""
        if language_code and not re.fullmatch(r"[a-z]{2}", language_code):
            raise bad_request("LANG_CODE_INVALID")
        self.commands[(_scope_key(params.get("scope")), language_code)] = commands
        return True

    def _get_my_commands(self, params: JSON, files: dict) -> list[JSON]:
        return self.commands.get((_scope_key(params.get("scope")), params.get("language_code") or ""), [])

    def _delete_my_commands(self, params: JSON, files: dict) -> bool:
        self.commands.pop((_scope_key(params.get("scope")), params.get("language_code") or ""), None)
        return True

    def _send_photo(self, params: JSON, files: dict) -> JSON:
        chat = self._chat_for(params)
        resolved = self._file_from_parameter("photo", params, files)
        if resolved is None:
            raise bad_request("there is no photo in the request")
        stored, _, _ = resolved
        content: JSON = {"photo": self._photo_sizes(stored.data)}
        self._add_bot_caption(content, params)
        return self._bot_message(chat, params, content)

    def _send_document(self, params: JSON, files: dict) -> JSON:
        chat = self._chat_for(params)
        resolved = self._file_from_parameter("document", params, files)
        if resolved is None:
            raise bad_request("there is no document in the request")
        stored, file_name, content_type = resolved
        content: JSON = {
            "document": {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_name": file_name,
                "mime_type": content_type,
                "file_size": stored.file_size,
            }
        }
        self._add_bot_caption(content, params)
        return self._bot_message(chat, params, content)

    def _send_media_group(self, params: JSON, files: dict) -> list[JSON]:
        chat = self._chat_for(params)
        media = params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise bad_request("wrong number of media in the album: send 2 to 10")
        media_group_id = str(next(self._media_group_ids))
        messages = []
        for item in media:
            kind = item.get("type")
            if kind not in ("photo", "document"):
                raise bad_request(f"the emulator does not support media of type {kind!r}")
            resolved = self._file_from_parameter("media", item, files)
            if resolved is None:
                raise bad_request("there is no media in the album item")
            stored, file_name, content_type = resolved
            if kind == "photo":
                content: JSON = {"photo": self._photo_sizes(stored.data)}
            else:
                content = {
                    "document": {
                        "file_id": stored.file_id,
                        "file_unique_id": stored.file_unique_id,
                        "file_name": file_name,
                        "mime_type": content_type,
                        "file_size": stored.file_size,
                    }
                }
            self._add_bot_caption(content, item)
            content["media_group_id"] = media_group_id
            messages.append(self._bot_message(chat, params, content))
        return messages

    def _add_bot_caption(self, content: JSON, params: JSON) -> None:
        caption = params.get("caption")
        if not caption:
            return
        if len(caption) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        content["caption"] = caption

    def _delete_message(self, params: JSON, files: dict) -> bool:
        chat = self._chat_for(params)
        key = (chat["id"], params.get("message_id"))
        if key not in self._messages or key in self.deleted_messages:
            raise bad_request("message to delete not found")
        self.deleted_messages.add(key)
        return True

    def _close(self, params: JSON, files: dict) -> bool:
        return True

    def _log_out(self, params: JSON, files: dict) -> bool:
        return True


def _decode_form_value(name: str, value: str) -> Any:
    if name in STRING_PARAMETERS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _scope_key(scope: Any) -> str:
    return json.dumps(scope or {"type": "default"}, sort_keys=True)


def _suffix(file_name: str) -> str:
    match = re.search(r"\.[A-Za-z0-9]{1,8}$", file_name)
    return match.group().lower() if match else ""


def _photo_size(stored: StoredFile, size: tuple[int, int]) -> JSON:
    return {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "width": size[0],
        "height": size[1],
        "file_size": stored.file_size,
    }


def _flatten_to_rgb(image: Any) -> Any:
    """Return an RGB copy of a Pillow image with any transparency composited on white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _set_or_remove(message: JSON, key: str, value: Any) -> None:
    if value is None:
        message.pop(key, None)
    else:
        message[key] = value
