"""Command menus: the commands Telegram clients list, with descriptions in English and Chinese.

Feature modules add their commands with `add_menu_command` from their `register` function.
`set_command_menus` then publishes one menu per language with `setMyCommands`
(https://core.telegram.org/bots/api#setmycommands): the default menu in English, one for
`language_code="en"` and one for `language_code="zh"`. Clients pick the menu of their
interface language and fall back to the default one. Admin-only commands appear only in
the private chats of the admins in ADMIN_IDS, through a chat scope.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from telegram import Bot, BotCommand, BotCommandScopeChat, BotCommandScopeDefault
from telegram.error import TelegramError

from bot.i18n import DEFAULT_LANGUAGE, LANGUAGES, text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MenuCommand:
    """A command as shown in the menu: its name and the message key of its description."""

    command: str
    description_key: str
    admin_only: bool = False


# Insertion order is menu order. The core commands come first.
_MENU: dict[str, MenuCommand] = {}


def add_menu_command(command: str, description_key: str, *, admin_only: bool = False) -> None:
    """Add a command to the menus; adding the same command again replaces its entry."""
    _MENU[command] = MenuCommand(command, description_key, admin_only)


def menu_commands(*, include_admin: bool = False) -> list[MenuCommand]:
    """Return the menu entries in order, with the admin-only ones when `include_admin`."""
    return [entry for entry in _MENU.values() if include_admin or not entry.admin_only]


def bot_commands(lang: str, *, include_admin: bool = False) -> list[BotCommand]:
    """Return the menu as `BotCommand` objects with descriptions in `lang`."""
    return [
        BotCommand(entry.command, text(entry.description_key, lang))
        for entry in menu_commands(include_admin=include_admin)
    ]


async def set_command_menus(bot: Bot, admin_ids: Iterable[int] = ()) -> None:
    """Publish the menus for every language, and the admin menus for each admin's private chat.

    A failure is logged and skipped, because a missing menu must not stop the bot. Setting an
    admin's menu fails with "chat not found" until that admin has written to the bot.
    """
    await _set_menu(bot, bot_commands(DEFAULT_LANGUAGE), BotCommandScopeDefault(), None)
    for lang in LANGUAGES:
        await _set_menu(bot, bot_commands(lang), BotCommandScopeDefault(), lang)

    if not any(entry.admin_only for entry in _MENU.values()):
        return
    for admin_id in sorted(admin_ids):
        scope = BotCommandScopeChat(admin_id)
        await _set_menu(bot, bot_commands(DEFAULT_LANGUAGE, include_admin=True), scope, None)
        for lang in LANGUAGES:
            await _set_menu(bot, bot_commands(lang, include_admin=True), scope, lang)


async def _set_menu(bot: Bot, commands: list[BotCommand], scope: BotCommandScopeDefault | BotCommandScopeChat, lang: str | None) -> None:
    try:
        await bot.set_my_commands(commands, scope=scope, language_code=lang)
    except TelegramError as error:
        logger.warning("setMyCommands failed for scope %s, language %s: %s", scope.type, lang or "default", error)
    else:
        logger.info("command menu set for scope %s, language %s: %d commands", scope.type, lang or "default", len(commands))


add_menu_command("start", "command.start")
add_menu_command("help", "command.help")
add_menu_command("top5", "command.top5")
add_menu_command("lang", "command.lang")
