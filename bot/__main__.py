"""Run the bot: `python -m bot`, until SIGINT or SIGTERM.

Settings come from the environment and `.env` (see `bot/settings.py`). A missing or
invalid setting ends start-up with exit status 2 and, without a traceback, one line per
problem that names the setting and how to fix it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from bot.logging_config import configure_logging_from_settings
from bot.runtime import BotRuntime, StartupError, check_model_path, new_bundle_hint
from bot.settings import Settings
from bot.webhook import WebhookConfigError

logger = logging.getLogger(__name__)

EXIT_CONFIGURATION_ERROR = 2

# Hint per required setting, printed when the setting is missing.
MISSING_SETTING_HINTS = {
    "telegram_bot_token": "set it to the token @BotFather gave your bot",
    "model_path": f"set it to a model bundle directory, {new_bundle_hint()}",
}


def describe_settings_error(error: ValidationError) -> list[str]:
    """Return one line per invalid or missing setting, naming its environment variable."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "settings"
        variable = field.upper()
        if problem["type"] == "missing":
            lines.append(f"{variable} is not set: {MISSING_SETTING_HINTS.get(field, 'set it in the environment or in .env')}")
        else:
            # pydantic starts the message of a validator's ValueError with "Value error, ".
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{variable} is invalid: {message}")
    return lines


async def serve(settings: Settings) -> None:
    """Run the bot until SIGINT or SIGTERM, then stop it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    async with BotRuntime(settings):
        await stop.wait()
        logger.info("stop signal received; shutting down")


def main() -> int:
    try:
        settings = Settings()  # type: ignore[call-arg]
    except ValidationError as error:
        for line in describe_settings_error(error):
            print(line, file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR

    try:
        check_model_path(settings)
        configure_logging_from_settings(settings)
    except (StartupError, ValueError) as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR
    try:
        asyncio.run(serve(settings))
    except (StartupError, WebhookConfigError) as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIGURATION_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
