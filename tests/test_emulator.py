"""The Telegram emulator, driven through python-telegram-bot's own `Bot` client."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
import telegram
from aiohttp import web
from PIL import Image
from telegram import BotCommand, BotCommandScopeAllPrivateChats, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, Conflict, EndPointNotFound, Forbidden, RetryAfter

from tests.emulator import (
    MAX_DOWNLOAD_BYTES,
    TelegramEmulator,
    group_chat,
    inline_buttons,
    make_user,
    private_chat,
)

ALICE = make_user(1001, "Alice", language_code="en")
BOB = make_user(1002, "Bob", language_code="zh-hans")


def jpeg_bytes(size: tuple[int, int] = (1000, 600), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
async def emulator() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator() as running:
        yield running


@pytest.fixture
async def bot(emulator: TelegramEmulator) -> AsyncIterator[telegram.Bot]:
    client = telegram.Bot(emulator.token, base_url=emulator.base_url, base_file_url=emulator.base_file_url)
    async with client:
        yield client


async def test_get_me_returns_bot_user(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    me = await bot.get_me()

    assert me.is_bot
    assert me.username == emulator.bot_user["username"]
    assert emulator.calls_to("getMe")


async def test_wrong_token_is_unauthorized(emulator: TelegramEmulator) -> None:
    client = telegram.Bot("42:wrong", base_url=emulator.base_url, base_file_url=emulator.base_file_url)

    with pytest.raises(telegram.error.InvalidToken):
        await client.get_me()


async def test_get_updates_confirms_by_offset(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    first = emulator.send_text(ALICE, None, "hello")
    emulator.send_text(ALICE, None, "again")

    updates = await bot.get_updates(timeout=0)
    assert [update.message.text for update in updates] == ["hello", "again"]
    assert updates[0].message.message_id == first["message_id"]

    # Without a higher offset, the same updates come back.
    repeated = await bot.get_updates(timeout=0)
    assert [update.update_id for update in repeated] == [update.update_id for update in updates]

    # An offset past the last update confirms both.
    empty = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
    assert empty == ()
    assert emulator.pending_update_count == 0


async def test_get_updates_limit(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    for number in range(3):
        emulator.send_text(ALICE, None, f"message {number}")

    updates = await bot.get_updates(limit=2, timeout=0)

    assert len(updates) == 2


async def test_long_poll_returns_when_update_arrives(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=20))
    await emulator.wait_for_call("getUpdates")
    assert not poll.done()

    emulator.send_text(ALICE, None, "late")
    updates = await asyncio.wait_for(poll, 10)

    assert [update.message.text for update in updates] == ["late"]


async def test_newer_poll_terminates_older(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    older = asyncio.create_task(bot.get_updates(timeout=20))
    await emulator.wait_for_call("getUpdates")

    # A second client, as a second bot instance would be (one Bot polls over one connection).
    async with telegram.Bot(emulator.token, base_url=emulator.base_url) as second:
        newer = asyncio.create_task(second.get_updates(timeout=20))
        with pytest.raises(Conflict):
            await asyncio.wait_for(older, 10)
        emulator.send_text(ALICE, None, "hi")
        assert len(await asyncio.wait_for(newer, 10)) == 1


async def test_command_entities_reach_ptb(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.send_command(ALICE, None, "lang", "zh")

    (update,) = await bot.get_updates(timeout=0)

    assert update.message.text == "/lang zh"
    assert update.message.entities[0].type == "bot_command"
    assert update.message.entities[0].offset == 0
    assert update.message.entities[0].length == len("/lang")
    assert update.effective_user.language_code == "en"


async def test_send_message_reply_and_markup(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    question = emulator.send_text(ALICE, None, "what is this?")
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Yes", callback_data="y1")]])

    sent = await bot.send_message(ALICE["id"], "A daisy.", reply_to_message_id=question["message_id"], reply_markup=markup)

    assert sent.reply_to_message.message_id == question["message_id"]
    (stored,) = emulator.sent_messages(ALICE["id"])
    assert stored["text"] == "A daisy."
    assert inline_buttons(stored) == [{"text": "Yes", "callback_data": "y1"}]
    assert emulator.replies_to(question) == [stored]


async def test_send_message_errors(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))

    with pytest.raises(BadRequest, match="[Cc]hat not found"):
        await bot.send_message(999, "nobody is here")
    with pytest.raises(BadRequest, match="[Mm]essage to be replied not found"):
        await bot.send_message(ALICE["id"], "reply", reply_to_message_id=12345)
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(ALICE["id"], "x" * 4097)
    too_long = "x" * 65
    with pytest.raises(BadRequest, match="BUTTON_DATA_INVALID|Button_data_invalid"):
        await bot.send_message(
            ALICE["id"], "buttons", reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data=too_long)]])
        )
    assert emulator.sent_messages() == []


async def test_edit_not_modified(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    sent = await bot.send_message(ALICE["id"], "first")

    edited = await bot.edit_message_text("second", chat_id=ALICE["id"], message_id=sent.message_id)
    assert edited.text == "second"
    with pytest.raises(BadRequest, match="[Mm]essage is not modified"):
        await bot.edit_message_text("second", chat_id=ALICE["id"], message_id=sent.message_id)

    markup = InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data="b")]])
    await bot.edit_message_reply_markup(chat_id=ALICE["id"], message_id=sent.message_id, reply_markup=markup)
    with pytest.raises(BadRequest, match="[Mm]essage is not modified"):
        await bot.edit_message_reply_markup(chat_id=ALICE["id"], message_id=sent.message_id, reply_markup=markup)
    assert emulator.message(ALICE["id"], sent.message_id)["reply_markup"] == markup.to_dict()


async def test_edit_others_message_rejected(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    own = emulator.send_text(ALICE, None, "mine")

    with pytest.raises(BadRequest, match="can't be edited"):
        await bot.edit_message_text("changed", chat_id=ALICE["id"], message_id=own["message_id"])
    with pytest.raises(BadRequest, match="not found"):
        await bot.edit_message_text("changed", chat_id=ALICE["id"], message_id=777)


async def test_blocked_user_is_forbidden(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    emulator.block_user(ALICE["id"])

    with pytest.raises(Forbidden, match="blocked by the user"):
        await bot.send_message(ALICE["id"], "hello")
    with pytest.raises(Forbidden):
        await bot.send_chat_action(ALICE["id"], "typing")

    emulator.unblock_user(ALICE["id"])
    await bot.send_message(ALICE["id"], "hello")
    assert len(emulator.sent_messages(ALICE["id"])) == 1


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_retry_after_injection(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    emulator.inject_retry_after("sendMessage", seconds=3, times=2)

    for _ in range(2):
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(ALICE["id"], "flood")
        # `retry_after` is an int in python-telegram-bot 22 unless PTB_TIMEDELTA opts in to timedelta.
        assert "Retry in 3" in str(caught.value)

    await bot.send_message(ALICE["id"], "calm")
    assert [message["text"] for message in emulator.sent_messages()] == ["calm"]
    assert [call.status for call in emulator.calls_to("sendMessage")] == [429, 429, 200]


async def test_photo_sizes_and_download(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    original = jpeg_bytes((1000, 600))
    emulator.send_photo(ALICE, None, original, caption="/top5")

    (update,) = await bot.get_updates(timeout=0)
    sizes = update.message.photo

    assert [max(size.width, size.height) for size in sizes] == [90, 320, 800, 1000]
    assert len({size.file_unique_id for size in sizes}) == len(sizes)
    assert update.message.caption_entities[0].type == "bot_command"
    largest = await bot.get_file(sizes[-1].file_id)
    assert largest.file_size == len(original)
    assert bytes(await largest.download_as_bytearray()) == original
    thumbnail = await bot.get_file(sizes[0].file_id)
    with Image.open(io.BytesIO(bytes(await thumbnail.download_as_bytearray()))) as image:
        assert max(image.size) == 90


async def test_undecodable_photo_has_one_size(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.send_photo(ALICE, None, b"\xff\xd8\xff\xe0 broken")

    (update,) = await bot.get_updates(timeout=0)

    assert len(update.message.photo) == 1


async def test_document_size_limit(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.send_document(ALICE, None, b"%PDF-1.4", "big.pdf", "application/pdf", declared_size=MAX_DOWNLOAD_BYTES + 1)
    emulator.send_document(ALICE, None, b"", "empty.jpg", "image/jpeg")

    big, empty = (update.message.document for update in await bot.get_updates(timeout=0))

    assert big.file_size == MAX_DOWNLOAD_BYTES + 1
    with pytest.raises(BadRequest, match="[Ff]ile is too big"):
        await bot.get_file(big.file_id)
    empty_file = await bot.get_file(empty.file_id)
    assert empty.file_size == 0
    assert bytes(await empty_file.download_as_bytearray()) == b""
    with pytest.raises(BadRequest, match="[Ii]nvalid file_id"):
        await bot.get_file("no-such-file")


async def test_other_message_kinds(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.send_sticker(ALICE, None)
    emulator.send_video(ALICE, None)
    emulator.send_voice(ALICE, None)
    emulator.send_location(ALICE, None)
    said = emulator.send_text(ALICE, None, "typo")
    emulator.send_edited_message(ALICE, None, said, "fixed")

    updates = await bot.get_updates(timeout=0)

    assert updates[0].message.sticker is not None
    assert updates[1].message.video is not None
    assert updates[2].message.voice is not None
    assert updates[3].message.location is not None
    assert updates[5].edited_message.text == "fixed"
    assert updates[5].edited_message.message_id == said["message_id"]


async def test_group_chat_and_callback_query(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    group = group_chat(-1001234)
    emulator.send_text(ALICE, group, "hi all")
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Daisy", callback_data="p1")]])
    answer = await bot.send_message(group["id"], "Daisy?", reply_markup=markup)

    query = emulator.press_button(BOB, group, answer.message_id, "p1")
    with pytest.raises(ValueError):
        emulator.press_button(BOB, group, answer.message_id, "forged")
    forged = emulator.press_button(BOB, group, answer.message_id, "forged", require_button=False)

    updates = await bot.get_updates(timeout=0)
    callback = updates[1].callback_query
    assert callback.data == "p1"
    assert callback.from_user.id == BOB["id"]
    assert callback.message.chat.type == "supergroup"
    assert updates[2].callback_query.data == "forged"

    await bot.answer_callback_query(query["id"], text="Saved")
    assert (await emulator.wait_for_callback_answer(query))["text"] == "Saved"
    with pytest.raises(BadRequest, match="[Qq]uery is too old"):
        await bot.answer_callback_query(query["id"], text="again")
    assert forged["id"] not in emulator.callback_answers


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning")
async def test_chat_action_validation(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))

    await bot.send_chat_action(ALICE["id"], "typing")
    with pytest.raises(BadRequest):
        await bot.do_api_request("sendChatAction", api_kwargs={"chat_id": ALICE["id"], "action": "dancing"})

    assert emulator.chat_actions(ALICE["id"]) == ["typing"]


async def test_commands_per_language_and_scope(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    english = [BotCommand("start", "Start"), BotCommand("lang", "Language")]
    chinese = [BotCommand("start", "开始")]

    await bot.set_my_commands(english)
    await bot.set_my_commands(chinese, language_code="zh")
    await bot.set_my_commands(english[:1], scope=BotCommandScopeAllPrivateChats())

    assert [command.command for command in await bot.get_my_commands()] == ["start", "lang"]
    assert (await bot.get_my_commands(language_code="zh"))[0].description == "开始"
    assert emulator.commands_for("zh") == [{"command": "start", "description": "开始"}]
    assert emulator.commands_for("", {"type": "all_private_chats"}) == [{"command": "start", "description": "Start"}]
    assert emulator.commands_for("de") is None
    with pytest.raises(BadRequest):
        await bot.set_my_commands([BotCommand("Bad-Name", "x")])
    assert await bot.delete_my_commands(language_code="zh")
    assert await bot.get_my_commands(language_code="zh") == ()


async def test_send_photo_document_and_album(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    image = jpeg_bytes((400, 300))

    photo = await bot.send_photo(ALICE["id"], image, caption="reference")
    document = await bot.send_document(ALICE["id"], b"col1,col2\n", filename="table.csv")
    album = await bot.send_media_group(
        ALICE["id"], [telegram.InputMediaPhoto(image), telegram.InputMediaPhoto(jpeg_bytes((300, 300), (0, 90, 0)))]
    )
    again = await bot.send_photo(ALICE["id"], photo.photo[-1].file_id)

    assert photo.caption == "reference"
    assert emulator.file_bytes(photo.photo[-1].file_id) == image
    assert document.document.file_name == "table.csv"
    assert len(album) == 2
    assert album[0].media_group_id == album[1].media_group_id
    assert again.photo[-1].file_unique_id == photo.photo[-1].file_unique_id
    assert len(emulator.sent_messages(ALICE["id"])) == 5
    with pytest.raises(BadRequest):
        await bot.send_media_group(ALICE["id"], [telegram.InputMediaPhoto(image)])


async def test_delete_message(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    sent = await bot.send_message(ALICE["id"], "soon gone")

    assert await bot.delete_message(ALICE["id"], sent.message_id)
    assert emulator.sent_messages() == []
    with pytest.raises(BadRequest, match="not found"):
        await bot.delete_message(ALICE["id"], sent.message_id)


async def test_unknown_method_is_recorded(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("sendFlowerCard", api_kwargs={"chat_id": ALICE["id"]})

    assert [call.method for call in emulator.unknown_calls] == ["sendFlowerCard"]
    assert emulator.unknown_calls[0].status == 404


async def test_close_and_log_out(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    assert await bot.close()
    assert await bot.log_out()


async def test_wait_for_counts_and_times_out(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    emulator.add_chat(private_chat(ALICE))
    waiting = asyncio.create_task(emulator.wait_for(2, chat_id=ALICE["id"], timeout=20))

    await bot.send_message(ALICE["id"], "one")
    assert not waiting.done()
    await bot.send_message(ALICE["id"], "two")
    messages = await asyncio.wait_for(waiting, 10)

    assert [message["text"] for message in messages] == ["one", "two"]
    with pytest.raises(TimeoutError, match="3 sent message"):
        await emulator.wait_for(3, timeout=0.05)


async def test_webhook_delivery_with_secret(bot: telegram.Bot, emulator: TelegramEmulator) -> None:
    received: list[tuple[str | None, dict]] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cret")
        with pytest.raises(Conflict):
            await bot.get_updates(timeout=0)
        emulator.send_text(ALICE, None, "via webhook")

        await emulator.wait_for(lambda: received)
        info = await bot.get_webhook_info()
        assert info.url.endswith("/hook")
        assert received[0][0] == "s3cret"
        assert received[0][1]["message"]["text"] == "via webhook"
        await emulator.wait_for(lambda: emulator.pending_update_count == 0)

        await bot.delete_webhook()
        assert (await bot.get_webhook_info()).url == ""
        with pytest.raises(BadRequest):
            await bot.set_webhook("http://203.0.113.5/hook")
    finally:
        await runner.cleanup()
