"""Admin commands check ADMIN_IDS on every call, for every admin command the bot registers."""

from __future__ import annotations

from bot.commands import menu_commands
from bot.i18n import CATALOG, text
from tests.emulator import make_user
from tests.fixtures.bot import BotHarness

ADMIN = make_user(9501, "Ada", language_code="en")
PERSON = make_user(9502, "Pat", language_code="en")
# Arguments that make an admin command report instead of doing work (no retraining starts).
SAFE_ARGUMENTS = {"retrain": "status"}


def refusals() -> set[str]:
    """Return every "admins only" message, in both languages."""
    return {translation for key, translations in CATALOG.items() if key.endswith("admins_only") for translation in translations.values()}


def admin_commands() -> list[str]:
    return [entry.command for entry in menu_commands(include_admin=True) if entry.admin_only]


async def test_every_admin_command_checks_admin_ids(bot_harness: BotHarness) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN["id"]}))
    emulator = bot_harness.emulator
    commands = admin_commands()
    assert "stats" in commands

    for command in commands:
        arguments = SAFE_ARGUMENTS.get(command, "")
        refused = emulator.send_command(PERSON, None, command, arguments)
        refusal = await emulator.wait_for_response(refused)
        await bot_harness.wait_idle()
        assert refusal["text"] in refusals(), f"/{command} from a non-admin got {refusal['text']!r}"
        assert emulator.sent_messages(PERSON["id"])[-1] == refusal, f"/{command} sent more than the refusal"

        allowed = emulator.send_command(ADMIN, None, command, arguments)
        answer = await emulator.wait_for_response(allowed)
        assert answer["text"] not in refusals(), f"/{command} refused an admin"
        assert answer["text"] != text("input.unknown_command", "en"), f"/{command} has no handler"


async def test_admin_ids_read_on_each_call(bot_harness: BotHarness) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN["id"]}))
    emulator = bot_harness.emulator
    bot_context = bot_harness.context

    first = emulator.send_command(ADMIN, None, "stats")
    assert (await emulator.wait_for_response(first))["text"] not in refusals()

    # Replacing the settings of the running bot takes effect on the next call, with no restart.
    bot_context.settings = bot_context.settings.model_copy(update={"admin_ids": frozenset({PERSON["id"]})})
    for command in admin_commands():
        arguments = SAFE_ARGUMENTS.get(command, "")
        former = emulator.send_command(ADMIN, None, command, arguments)
        assert (await emulator.wait_for_response(former))["text"] in refusals(), f"/{command} still obeys a removed admin"
        await bot_harness.wait_idle()
    promoted = emulator.send_command(PERSON, None, "stats")
    assert (await emulator.wait_for_response(promoted))["text"] not in refusals()
