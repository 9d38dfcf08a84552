"""Start and stop the whole bot: database, model, Telegram application, HTTP server.

    async with BotRuntime(settings) as runtime:
        await stop_event.wait()

`start()` upgrades the database to the newest migration and loads and warms up the
model bundle. It then builds and starts the python-telegram-bot `Application`, publishes
the command menus, queues the image updates a crash left unfinished (`bot.inbox`), and
receives updates by long polling, or through the webhook on the HTTP server when
WEBHOOK_URL is set. `stop()` undoes it in reverse order and lets the
updates and HTTP requests in flight finish first.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from telegram import Update
from telegram.error import InvalidToken
from telegram.ext import Application

from bot.app import build_application
from bot.commands import set_command_menus
from bot.context import BotContext
from bot.inbox import replay_unfinished_updates
from bot.model_registry import UnservableBundleError, choose_serving_bundle
from bot.polling_errors import PollingErrorLog
from bot.retrain import start_retrain_supervisor, stop_retrain_supervisor
from bot.settings import Settings
from classifier.bundle import BundleError
from classifier.service import ClassifierService
from storage.db import create_engine, new_session_factory, upgrade_database_async
from storage.images import ImageStore
from storage.repository import Repository

logger = logging.getLogger(__name__)

# Seconds a long poll waits at Telegram for updates before it returns empty.
POLL_TIMEOUT_S = 10


class StartupError(Exception):
    """A setting that prevents start-up. The message is one line that names the setting and how to fix it."""


def backend_startup_error(backend: str, model_path: Any, reason: str) -> StartupError:
    """Return the one-line start-up error for a bundle that BACKEND cannot serve."""
    if backend == "onnx":
        return StartupError(
            f"BACKEND=onnx cannot serve {model_path}: {reason}: run `python -m training export --model {model_path}` "
            "to add an ONNX export, or set BACKEND=torch"
        )
    return StartupError(f"BACKEND={backend} cannot serve {model_path}: {reason}")


def new_bundle_hint() -> str:
    return "for example run `python -m classifier new-bundle --classes oxford102 --out data/models/demo` and set MODEL_PATH=data/models/demo"


def check_model_path(settings: Settings) -> None:
    """Raise `StartupError` unless MODEL_PATH is a directory with a `bundle.json`."""
    if not (settings.model_path / "bundle.json").is_file():
        raise StartupError(f"MODEL_PATH={settings.model_path} is not a model bundle (no bundle.json there): {new_bundle_hint()}")


def check_storage(settings: Settings) -> None:
    """Raise `StartupError` unless DATA_DIR can be created and DATABASE_URL names an async driver."""
    try:
        settings.photos_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StartupError(
            f"DATA_DIR={settings.data_dir} cannot be created ({error.strerror or error}): set DATA_DIR to a writable directory"
        ) from None
    if not settings.database_url:
        return
    hint = "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/NAME"
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise StartupError(f"DATABASE_URL is not a database URL: {hint}") from None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise StartupError(f"DATABASE_URL names an unknown database driver ({url.drivername}): {hint}") from None
    if not getattr(dialect, "is_async", False):
        raise StartupError(f"DATABASE_URL names a driver without asyncio support ({url.drivername}): {hint}")


class BotRuntime:
    """The running bot process: owns the engine, the classifier service, the application and the HTTP server.

    `service` replaces the model that `settings.model_path` names; tests pass one whose
    inference they control. The runtime closes whatever service it uses when it stops.
    """

    def __init__(self, settings: Settings, *, service: ClassifierService | None = None) -> None:
        self.settings = settings
        self._service = service
        self._engine: Any = None
        self._bot_context: BotContext | None = None
        self._application: Application | None = None
        self._http_runner: Any = None
        self._webhook_started = False
        self._started = False

    @property
    def context(self) -> BotContext:
        """The shared services handlers use; available once `start()` has built them."""
        if self._bot_context is None:
            raise RuntimeError("the bot runtime is not started")
        return self._bot_context

    @property
    def application(self) -> Application:
        """The python-telegram-bot application; available once `start()` has built it."""
        if self._application is None:
            raise RuntimeError("the bot runtime is not started")
        return self._application

    @property
    def running(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Bring every part up; on failure, close what was started and re-raise."""
        settings = self.settings
        logger.info("starting flowerbot")
        try:
            if self._service is None:
                check_model_path(settings)
            check_storage(settings)
            await upgrade_database_async(settings.resolved_database_url)
            self._engine = create_engine(settings.resolved_database_url)
            repository = Repository(new_session_factory(self._engine))
            images = ImageStore(settings.photos_dir)
            service = self._service or await self._load_service(repository)
            self._service = service

            self._bot_context = BotContext(settings=settings, service=service, repository=repository, images=images)
            self._application = build_application(settings, self._bot_context)
            try:
                await self._application.initialize()
            except InvalidToken:
                # python-telegram-bot puts the token into this error's message, so the message is dropped.
                raise StartupError(
                    "TELEGRAM_BOT_TOKEN was rejected by the Bot API (Unauthorized): set it to the token @BotFather gave your bot"
                ) from None
            await set_command_menus(self._application.bot, settings.admin_ids)
            await start_retrain_supervisor(self._bot_context, self._application.bot)
            # Before polling or the webhook, so the photos a crash cut off come first.
            await replay_unfinished_updates(self._application, repository, max_attempts=settings.inbox_max_attempts)
            await self._application.start()

            if settings.http_port:
                # The HTTP API (/predict, /healthz, /readyz, /metrics, and the webhook route).
                from bot.http_api import start_http_server

                try:
                    self._http_runner = await start_http_server(self)
                except OSError as error:
                    if error.errno == errno.EADDRINUSE:
                        raise StartupError(
                            f"HTTP_PORT={settings.http_port} is already in use: set HTTP_PORT to a free port or 0 to turn the HTTP server off"
                        ) from None
                    raise StartupError(
                        f"HTTP_HOST={settings.http_host} HTTP_PORT={settings.http_port} cannot be listened on ({error.strerror or error}): "
                        "set them to a local address and a free port, or HTTP_PORT=0 to turn the HTTP server off"
                    ) from None
            if settings.webhook_url:
                from bot.webhook import start_webhook

                await start_webhook(self)
                self._webhook_started = True
            else:
                await self._application.updater.start_polling(
                    poll_interval=0.0,
                    timeout=POLL_TIMEOUT_S,
                    allowed_updates=Update.ALL_TYPES,
                    drop_pending_updates=False,
                    error_callback=PollingErrorLog(),
                )
        except BaseException as error:
            if not isinstance(error, StartupError):
                logger.error("start-up failed (%s); stopping what was started", type(error).__name__)
            await self.stop()
            raise
        self._started = True
        logger.info("flowerbot is running as @%s (%s)", self._application.bot.username, "webhook" if settings.webhook_url else "long polling")

    async def _load_service(self, repository: Repository) -> ClassifierService:
        settings = self.settings
        try:
            # The registry's serving model wins over MODEL_PATH once /retrain or /rollback chose one.
            model_path = (await choose_serving_bundle(settings, repository)).path or settings.model_path
        except BundleError as error:
            raise StartupError(f"MODEL_PATH={settings.model_path} could not be loaded: {error}") from error
        except UnservableBundleError as error:
            logger.error("the %s backend cannot serve %s: %s", settings.backend, error.path, error.reason)
            raise backend_startup_error(settings.backend, error.path, error.reason.split("; ")[0]) from None
        logger.info("loading model bundle %s on %s (%s backend)", model_path, settings.device, settings.backend)
        try:
            return await asyncio.to_thread(
                ClassifierService.from_path,
                model_path,
                backend_kind=settings.backend,
                device=settings.device,
                precision=settings.precision,
                max_batch=settings.resolved_batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000.0,
                workers=settings.inference_workers,
                max_pixels=settings.max_image_pixels,
                warmup=True,
            )
        except BundleError as error:
            raise StartupError(f"MODEL_PATH={model_path} could not be loaded: {error}") from error
        except (RuntimeError, ValueError) as error:
            # The backend cannot run this bundle with these settings, such as BACKEND=onnx
            # with a bundle that has no ONNX export, or DEVICE=cuda without CUDA.
            logger.error("the %s backend could not load %s: %s", settings.backend, model_path, error)
            raise backend_startup_error(settings.backend, model_path, str(error).split("; ")[0]) from None

    async def stop(self) -> None:
        """Stop receiving updates, finish those in flight, then close the application, model and database.

        Safe to call more than once and after a failed `start()`.
        """
        self._started = False
        application = self._application
        if application is not None and application.updater is not None and application.updater.running:
            await application.updater.stop()
        if self._webhook_started:
            from bot.webhook import stop_webhook

            await stop_webhook(self)
            self._webhook_started = False
        if self._http_runner is not None:
            from bot.http_api import stop_http_server

            await stop_http_server(self._http_runner)
            self._http_runner = None
        if self._bot_context is not None:
            # Ends a training run in progress while the bot can still tell its admin.
            await stop_retrain_supervisor(self._bot_context)
        if application is not None:
            if application.running:
                # Waits for the updates that are being handled.
                await application.stop()
            await application.shutdown()
            self._application = None
        if self._service is not None:
            await self._service.close()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        logger.info("flowerbot stopped")

    async def __aenter__(self) -> BotRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
