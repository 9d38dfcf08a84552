"""The retrain supervisor: one training process at a time, watched from the bot's event loop.

`/retrain` starts `python -m training.retrain --job JOB.json` as a child process
through asyncio, in its own session (process group), so training never runs
on the event loop or the inference threads. The supervisor reads the child's
JSON-lines progress from stdout, keeps one progress message in the admin's
chat up to date, and when the child ends:

- with a `result` event: moves the candidate bundle from the run's work
  directory to `models_dir/<version>` (one rename, so the directory is whole
  or absent), registers it, and when the gate passed makes it the serving
  model (`set_serving`, then `ClassifierService.swap`);
- cancelled, failed or killed: marks the run, removes the work directory and
  sends the admin a message. The serving model and its registry row are untouched.

Runtime hooks, called by `bot/runtime.py`:

- `bot.model_registry.choose_serving_bundle(settings, repository)` before
  the classifier service is built: the bundle to load, so a promoted model
  keeps serving after a restart;
- `start_retrain_supervisor(bot_context, bot)` once the application is
  initialized: removes leftovers of a crash, fails runs left "running",
  sends their admins a failure message, registers the serving bundle, and stores the
  supervisor in `bot_context.extras["retrain"]`;
- `stop_retrain_supervisor(bot_context)` before the service closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from telegram import Bot
from telegram.error import BadRequest, Forbidden, TelegramError

from bot.i18n import language_from_code, text
from bot.model_registry import WORK_DIR_PREFIX, clean_model_dir, prune_old_bundles, register_serving_bundle
from bot.retrain_progress import (
    ProgressMessage,
    RunProgress,
    exit_error,
    failed_split,
    gate_lines,
    negatives_line,
    progress_text,
)
from classifier.backends import unservable_reason
from classifier.bundle import Bundle, BundleError
from training.gate import GateDecision
from training.retrain import CANDIDATE_DIR_NAME, SABOTAGE_MODES, TESTING_ENV, RetrainJob

if TYPE_CHECKING:
    from bot.context import BotContext
    from bot.settings import Settings
    from storage.models import RetrainRun
    from storage.repository import Repository

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRAIN_KEY = "retrain"
JOB_FILE_NAME = "job.json"
# With FLOWERBOT_TESTING=1, this variable names a sabotage mode for every run (tests only).
SABOTAGE_ENV = "FLOWERBOT_RETRAIN_SABOTAGE"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# A result event carries per-split metrics; lines are far below this.
STDOUT_LINE_LIMIT = 4 * 1024 * 1024
# Seconds between SIGTERM and SIGKILL when cancelling or stopping.
TERMINATE_GRACE_S = 10.0
LOG_TAIL_LINES = 20


class RetrainError(Exception):
    """A run that cannot start or a model switch that failed; `key` selects the admin's message."""

    def __init__(self, key: str, message: str, **values: Any) -> None:
        super().__init__(message)
        self.key = key
        self.values = values


@dataclasses.dataclass
class ActiveRun:
    """The run this bot process is supervising."""

    run_id: int
    admin_user_id: int
    admin_chat_id: int
    lang: str
    serving_version: str
    work_dir: Path
    log_path: Path
    started_at: float
    message: ProgressMessage
    progress: RunProgress = dataclasses.field(default_factory=RunProgress)
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    terminator: asyncio.Task[None] | None = None
    concluding: bool = False

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at


# ---------------------------------------------------------------------------
# The supervisor


@dataclasses.dataclass(frozen=True)
class StartOutcome:
    """Outcome of `/retrain`: the started `run_id`, or the `running_run_id` found already running."""

    run_id: int | None = None
    running_run_id: int | None = None
    running_phase: str | None = None


class RetrainSupervisor:
    """Starts, watches, cancels and concludes retraining runs, one at a time.

    `sabotage` (tests only) is passed to every job; the job honours it only
    when FLOWERBOT_TESTING=1.
    """

    def __init__(self, bot_context: BotContext, bot: Bot, *, python: str = sys.executable) -> None:
        self.bot_context = bot_context
        self.bot = bot
        self.python = python
        self.sabotage: str | None = None
        if os.environ.get(TESTING_ENV) == "1" and os.environ.get(SABOTAGE_ENV):
            self.sabotage = os.environ[SABOTAGE_ENV]
            if self.sabotage not in SABOTAGE_MODES:
                raise ValueError(f"{SABOTAGE_ENV}={self.sabotage!r} is not one of {', '.join(SABOTAGE_MODES)}")
        self._active: ActiveRun | None = None
        self._start_lock = asyncio.Lock()
        self._switch_lock = asyncio.Lock()
        self._closed = False

    # State

    @property
    def settings(self) -> Settings:
        return self.bot_context.settings

    @property
    def repository(self) -> Repository:
        return self.bot_context.repository

    @property
    def active(self) -> ActiveRun | None:
        """The run in progress in this process, or None."""
        return self._active

    @property
    def process_id(self) -> int | None:
        """PID of the training process (also its process group id), or None."""
        active = self._active
        return active.process.pid if active is not None and active.process is not None else None

    async def wait_idle(self) -> None:
        """Return once no run is in progress (tests, shutdown)."""
        while (active := self._active) is not None:
            if active.task is None:
                # Still starting: the task exists once the process is spawned.
                await asyncio.sleep(0.05)
                continue
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(active.task)

    # Starting

    def recipe_overrides(self) -> dict[str, Any]:
        """Return the recipe for retraining: RETRAIN_RECIPE_CONFIG, then the RETRAIN_* values; raise ValueError when invalid."""
        from training.recipe import Recipe, read_config

        settings = self.settings
        overrides: dict[str, Any] = {}
        if settings.retrain_recipe_config is not None:
            overrides.update(read_config(settings.retrain_recipe_config))
        overrides.update(
            epochs=settings.retrain_epochs,
            batch_size=settings.retrain_batch_size,
            lr=settings.retrain_lr,
            views=settings.retrain_views,
            seed=settings.retrain_seed,
        )
        Recipe.from_mapping(overrides)
        return overrides

    async def _collect_examples(self) -> tuple[tuple[dict[str, Any], ...], tuple[dict[str, Any], ...], tuple[dict[str, Any], ...]]:
        """Return the labelled, "not a flower" and "not in this list" photos for a job, in that order."""
        images = self.bot_context.images
        examples: list[dict[str, Any]] = []
        not_flower: list[dict[str, Any]] = []
        unknown_species: list[dict[str, Any]] = []
        sources = (
            (examples, await self.repository.labelled_examples()),
            (not_flower, await self.repository.not_flower_examples()),
            (unknown_species, await self.repository.unknown_species_examples()),
        )
        for target, rows in sources:
            for row in rows:
                try:
                    path = images.resolve(row.image_path)
                except ValueError as error:
                    logger.warning("prediction %d: skipping its photo: %s", row.prediction_id, error)
                    continue
                target.append({"path": str(path), "label": row.label, "image_sha256": row.image_sha256, "prediction_id": row.prediction_id})
        return tuple(examples), tuple(not_flower), tuple(unknown_species)

    async def start(self, admin_user_id: int, admin_chat_id: int, lang: str, *, command_message_id: int | None = None) -> StartOutcome:
        """Start a run for an admin, or report the one already running.

        Raises RetrainError (`not_configured`, `invalid_recipe`) before any run
        is recorded; a failure after that marks the run failed and sends the admin a message.
        """
        settings = self.settings
        if not settings.retrain_base_data:
            raise RetrainError("admin_model.retrain.not_configured", "RETRAIN_BASE_DATA is not set")
        try:
            recipe = await asyncio.to_thread(self.recipe_overrides)
        except (ValueError, OSError, ImportError) as error:
            # ImportError: a YAML recipe file without PyYAML installed.
            raise RetrainError("admin_model.retrain.invalid_recipe", str(error), error=str(error)) from error

        async with self._start_lock:
            if self._closed:
                raise RuntimeError("the retrain supervisor is stopped")
            if self._active is not None:
                return StartOutcome(running_run_id=self._active.run_id, running_phase=self._active.progress.phase_label)
            run = await self.repository.start_retrain_run(admin_user_id, admin_chat_id)
            if run is None:
                other = await self.repository.active_retrain_run()
                return StartOutcome(running_run_id=other.id if other else None, running_phase=other.phase if other else None)

            bundle = self.bot_context.service.bundle
            work_dir = settings.models_dir / f"{WORK_DIR_PREFIX}{run.id}"
            message = ProgressMessage(self.bot, admin_chat_id, min_interval_s=settings.retrain_progress_interval_s)
            active = ActiveRun(
                run_id=run.id,
                admin_user_id=admin_user_id,
                admin_chat_id=admin_chat_id,
                lang=lang,
                serving_version=bundle.version,
                work_dir=work_dir,
                log_path=settings.data_dir / "logs" / f"retrain-{run.id}.log",
                started_at=time.monotonic(),
                message=message,
            )
            self._active = active
            try:
                await self._spawn(active, bundle, recipe, command_message_id)
            except Exception as error:
                logger.exception("retrain run %d could not start", run.id)
                self._active = None
                await self._finish(active, "failed", error=str(error), phase="failed")
                await self._close_message(active, "failed")
                await self._notify(active, text("admin_model.retrain.start_failed", lang, run_id=run.id, error=error))
                await asyncio.to_thread(shutil.rmtree, active.work_dir, True)
                return StartOutcome(run_id=run.id)
            active.task = asyncio.create_task(self._supervise(active), name=f"retrain-run-{run.id}")
            return StartOutcome(run_id=run.id)

    async def _spawn(self, active: ActiveRun, bundle: Bundle, recipe: Mapping[str, Any], command_message_id: int | None) -> None:
        settings = self.settings
        if bundle.path is None:
            raise BundleError(f"serving bundle {bundle.version} has no directory to start training from")
        examples, not_flower, unknown_species = await self._collect_examples()
        base_data = settings.retrain_base_data or ""
        job = RetrainJob(
            run_id=active.run_id,
            serving_bundle=str(bundle.path),
            base_data=base_data,
            base_data_root=str(settings.data_dir) if base_data.lower() == "flowers102" else None,
            work_dir=str(active.work_dir),
            examples=examples,
            not_flower=not_flower,
            unknown_species=unknown_species,
            holdout_fraction=settings.retrain_holdout_fraction,
            seed=settings.retrain_seed,
            recipe=dict(recipe),
            gate_tolerance=settings.retrain_gate_tolerance,
            device=settings.retrain_device,
            threads=settings.retrain_threads,
            sabotage=self.sabotage,
        )

        def prepare() -> Path:
            shutil.rmtree(active.work_dir, ignore_errors=True)
            active.work_dir.mkdir(parents=True)
            active.log_path.parent.mkdir(parents=True, exist_ok=True)
            return job.write(active.work_dir / JOB_FILE_NAME)

        job_path = await asyncio.to_thread(prepare)
        initial = progress_text(active.run_id, active.serving_version, active.progress, active.lang)
        message_id = await active.message.open(initial, reply_to_message_id=command_message_id)
        if message_id is not None:
            await self._update_run(active, progress_message_id=message_id)

        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")]))
        environment["PYTHONUNBUFFERED"] = "1"
        with open(active.log_path, "ab") as log_file:
            active.process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "training.retrain",
                "--job",
                str(job_path),
                "--stop-on-stdin-eof",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=environment,
                cwd=str(PROJECT_ROOT),
                start_new_session=True,
                limit=STDOUT_LINE_LIMIT,
            )
        logger.info(
            "retrain run %d started by admin %d: pid %d, %d corrected, %d not-flower and %d unknown-species photos, log %s",
            active.run_id,
            active.admin_user_id,
            active.process.pid,
            len(examples),
            len(not_flower),
            len(unknown_species),
            active.log_path,
        )

    # Watching

    async def _supervise(self, active: ActiveRun) -> None:
        process = active.process
        assert process is not None and process.stdout is not None
        try:
            await self._read_events(active, process.stdout)
            returncode = await process.wait()
            self._kill_group(process.pid, signal.SIGKILL)
            await self._conclude(active, returncode)
        except asyncio.CancelledError:
            # The bot is stopping. The run is marked failed now, so the next start finds no
            # stale run to report, and the failure message is sent here instead.
            error = "the bot stopped during the run"
            await self._terminate(active)
            await self._finish(active, "failed", error=error, phase="failed")
            await self._close_message(active, "failed")
            await self._notify(active, text("admin_model.result.failed", active.lang, run_id=active.run_id, error=error, version=active.serving_version))
            raise
        except Exception as error:
            logger.exception("retrain run %d: supervisor failed", active.run_id)
            await self._terminate(active)
            await self._finish(active, "failed", error=f"supervisor error: {error}")
            await self._close_message(active, "failed")
            await self._notify(
                active, text("admin_model.result.failed", active.lang, run_id=active.run_id, error=error, version=self.bot_context.service.version)
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, active.work_dir, True)
            if active.message.blocked:
                await self._mark_admin_blocked(active)
            if self._active is active:
                self._active = None

    async def _read_events(self, active: ActiveRun, stream: asyncio.StreamReader) -> None:
        last_phase_label = None
        while True:
            try:
                line = await stream.readline()
            except ValueError as error:
                # A line over STDOUT_LINE_LIMIT: skip it rather than lose the run.
                logger.warning("retrain run %d: unreadable progress line: %s", active.run_id, error)
                continue
            if not line:
                return
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("retrain run %d: non-JSON line on stdout: %r", active.run_id, line[:200])
                continue
            if not isinstance(event, dict):
                continue
            active.progress.apply(event)
            if event.get("event") == "error":
                logger.error("retrain run %d: job reported: %s", active.run_id, event.get("message"))
            if not active.cancel_requested:
                active.message.update(progress_text(active.run_id, active.serving_version, active.progress, active.lang))
            label = active.progress.phase_label
            if label != last_phase_label:
                last_phase_label = label
                await self._update_run(active, phase=label[:64])

    async def _conclude(self, active: ActiveRun, returncode: int) -> None:
        lang = active.lang
        serving_version = self.bot_context.service.version
        result = active.progress.result
        if active.cancel_requested:
            logger.info("retrain run %d cancelled (exit status %d)", active.run_id, returncode)
            await self._finish(active, "cancelled", phase="cancelled")
            await self._close_message(active, "cancelled")
            await self._notify(active, text("admin_model.result.cancelled", lang, run_id=active.run_id, version=serving_version))
            return
        if returncode != 0 or result is None:
            error = active.progress.error or exit_error(returncode, lang)
            logger.error("retrain run %d failed: exit status %d: %s; log tail:\n%s", active.run_id, returncode, error, await self._log_tail(active))
            await self._finish(active, "failed", error=error, phase="failed")
            await self._close_message(active, "failed")
            await self._notify(active, text("admin_model.result.failed", lang, run_id=active.run_id, error=error, version=serving_version))
            return
        active.concluding = True
        await self._register_candidate(active, result)

    async def _register_candidate(self, active: ActiveRun, result: Mapping[str, Any]) -> None:
        lang = active.lang
        version = str(result["version"])
        decision = GateDecision.from_dict(result["gate"])
        previous = self.bot_context.service.version
        final_dir = self.settings.models_dir / version
        await asyncio.to_thread(os.replace, active.work_dir / CANDIDATE_DIR_NAME, final_dir)
        metrics = {
            **(result.get("metrics") or {}),
            "gate": decision.to_dict(),
            "data": result.get("data") or {},
            "retrain_run_id": active.run_id,
        }
        await self.repository.register_model(version, str(final_dir), metrics=metrics, status="candidate", parent_version=result.get("serving_version"))
        logger.info("retrain run %d: candidate %s registered at %s; gate %s (%s)", active.run_id, version, final_dir, decision.promote, decision.reason)

        if decision.promote:
            try:
                await self.switch_serving(version)
            except Exception as error:
                logger.exception("retrain run %d: switching to %s failed", active.run_id, version)
                await self.repository.set_model_status(version, "rejected")
                await self._finish(active, "failed", error=f"switching to {version} failed: {error}", metrics=metrics, candidate_version=version, phase="failed")
                headline = text("admin_model.result.promote_failed", lang, version=version, error=error, previous=previous)
            else:
                await self._finish(active, "succeeded", metrics=metrics, candidate_version=version, phase="promoted")
                headline = text("admin_model.result.promoted", lang, version=version, previous=previous)
        else:
            await self.repository.set_model_status(version, "rejected")
            await self._finish(active, "rejected", metrics=metrics, candidate_version=version, phase="rejected")
            split = text(f"admin_model.split.{failed_split(decision)}", lang)
            headline = text("admin_model.result.rejected", lang, version=version, previous=previous, split=split)

        summary = "\n".join([headline, "", *gate_lines(decision, lang), negatives_line(result.get("data") or {}, lang)])
        await self._close_message(active, "done")
        await self._send_result(active, summary, result.get("confusion_png"), version)
        await prune_old_bundles(self.repository, self.settings.models_dir, self.settings.retrain_keep_old_models)

    # Switching the serving model

    async def switch_serving(self, version: str) -> tuple[str, str]:
        """Make registered `version` the serving model: registry first, then the in-memory swap.

        Returns (previous version, new version). When the swap fails, the
        registry is set back to the previous version and the error re-raised.
        """
        async with self._switch_lock:
            model = await self.repository.get_model(version)
            if model is None:
                reason = f"model version {version} is not registered"
                raise RetrainError("admin_model.rollback.failed", reason, version=version, error=reason, previous=self.bot_context.service.version)
            bundle = await asyncio.to_thread(Bundle.load, model.path)
            backend = self.settings.backend
            problem = unservable_reason(bundle, backend)
            if problem is not None:
                raise RetrainError("serving.unservable", problem, version=version, backend=backend, path=model.path)
            service = self.bot_context.service
            previous = service.version
            await self.repository.set_serving(version)
            try:
                await service.swap(bundle)
            except Exception:
                logger.exception("swap to %s failed; the registry serves %s again", version, previous)
                await self.repository.set_serving(previous)
                raise
            logger.info("model %s is serving in place of %s", version, previous)
            return previous, version

    async def rollback(self, version: str | None = None) -> tuple[str, str]:
        """Serve `version`, by default the model that served before the current one; returns (previous, new) versions.

        Raises RetrainError `admin_model.rollback.running` during a run,
        `admin_model.rollback.no_previous` when there is nothing to return to, and
        `serving.unknown_version` or `serving.already_serving` for a bad `version`.
        """
        active = self._active
        if active is not None:
            raise RetrainError("admin_model.rollback.running", "a retrain is running", run_id=active.run_id)
        if version is None:
            target = await self.repository.previous_model()
            if target is None:
                raise RetrainError("admin_model.rollback.no_previous", "no previous model")
            return await self.switch_serving(target.version)
        if await self.repository.get_model(version) is None:
            raise RetrainError("serving.unknown_version", f"model version {version} is not registered", version=version)
        if version == self.bot_context.service.version:
            raise RetrainError("serving.already_serving", f"model version {version} is serving already", version=version)
        return await self.switch_serving(version)

    # Cancelling and stopping

    async def cancel(self) -> tuple[str, int | None]:
        """Cancel the run in progress; returns (outcome, run id), outcome being `requested`, `too_late`, `elsewhere` or `none`."""
        active = self._active
        if active is None:
            run = await self.repository.active_retrain_run()
            if run is None:
                return "none", None
            await self.repository.finish_retrain_run(run.id, "failed", error="cancelled, but no bot process was supervising it")
            return "elsewhere", run.id
        if active.concluding:
            return "too_late", active.run_id
        if not active.cancel_requested:
            active.cancel_requested = True
            logger.info("retrain run %d: cancel requested", active.run_id)
            active.message.update(
                progress_text(active.run_id, active.serving_version, active.progress, active.lang) + "\n" + text("admin_model.progress.cancelling", active.lang)
            )
            active.terminator = asyncio.create_task(self._terminate(active), name=f"retrain-cancel-{active.run_id}")
        return "requested", active.run_id

    async def _terminate(self, active: ActiveRun) -> None:
        """SIGTERM the job's process group, then SIGKILL it after TERMINATE_GRACE_S."""
        process = active.process
        if process is None or process.returncode is not None:
            return
        self._kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), TERMINATE_GRACE_S)
        except TimeoutError:
            logger.warning("retrain run %d: pid %d ignored SIGTERM for %.0f s; killing it", active.run_id, process.pid, TERMINATE_GRACE_S)
        self._kill_group(process.pid, signal.SIGKILL)

    @staticmethod
    def _kill_group(pgid: int, signum: int) -> None:
        # The job leads its own session, so its group id is its pid; DataLoader workers share it.
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as error:
            logger.error("cannot signal process group %d: %s", pgid, error)

    async def close(self) -> None:
        """Stop a run in progress (marked failed) and refuse new ones; called when the bot stops."""
        self._closed = True
        active = self._active
        if active is not None and active.task is not None:
            logger.warning("bot stopping: ending retrain run %d", active.run_id)
            active.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await active.task
            await active.message.close(None)

    # Reporting

    async def _update_run(self, active: ActiveRun, **fields: Any) -> None:
        try:
            await _finish_even_if_cancelled(self.repository.update_retrain_run(active.run_id, **fields))
        except Exception:
            # Progress bookkeeping must not end a run.
            logger.exception("retrain run %d: could not store %s", active.run_id, sorted(fields))

    async def _mark_admin_blocked(self, active: ActiveRun) -> None:
        try:
            await self.repository.mark_user_blocked(active.admin_user_id)
        except Exception:
            logger.exception("retrain run %d: could not mark admin %d as blocked", active.run_id, active.admin_user_id)

    async def _finish(self, active: ActiveRun, status: str, **fields: Any) -> None:
        try:
            await _finish_even_if_cancelled(self.repository.finish_retrain_run(active.run_id, status, **fields))
        except Exception:
            logger.exception("retrain run %d: could not mark it %s", active.run_id, status)

    async def _close_message(self, active: ActiveRun, phase: str) -> None:
        active.progress.phase = phase
        await active.message.close(progress_text(active.run_id, active.serving_version, active.progress, active.lang))

    async def _notify(self, active: ActiveRun, message_text: str) -> None:
        if active.message.blocked:
            logger.info("retrain run %d: not telling admin %d (blocked the bot): %s", active.run_id, active.admin_user_id, message_text)
            return
        try:
            await self.bot.send_message(active.admin_chat_id, message_text)
        except Forbidden as error:
            active.message.blocked = True
            logger.warning("retrain run %d: admin chat %d blocked the bot: %s", active.run_id, active.admin_chat_id, error)
        except TelegramError as error:
            logger.error("retrain run %d: could not tell admin chat %d: %s", active.run_id, active.admin_chat_id, error)

    async def _send_result(self, active: ActiveRun, summary: str, confusion_png: str | None, version: str) -> None:
        """Send the gate summary, with the candidate's confusion matrix as a photo when there is one."""
        if active.message.blocked:
            logger.info("retrain run %d: result not sent, admin %d blocked the bot", active.run_id, active.admin_user_id)
            return
        if confusion_png is None or not Path(confusion_png).is_file():
            await self._notify(active, summary)
            return
        photo = await asyncio.to_thread(Path(confusion_png).read_bytes)
        caption = f"{summary}\n\n{text('admin_model.result.caption', active.lang, version=version)}"
        chat_id = active.admin_chat_id
        try:
            try:
                await self.bot.send_photo(chat_id, photo, caption=caption)
            except BadRequest as error:
                # Telegram rejects photos over its size or aspect limits; a document has neither.
                logger.warning("retrain run %d: confusion matrix rejected as a photo (%s); sending it as a document", active.run_id, error)
                await self.bot.send_document(chat_id, photo, filename=f"confusion-{version}.png", caption=caption)
        except Forbidden as error:
            active.message.blocked = True
            logger.warning("retrain run %d: admin chat %d blocked the bot: %s", active.run_id, chat_id, error)
        except TelegramError as error:
            logger.error("retrain run %d: could not send the confusion matrix to chat %d: %s", active.run_id, chat_id, error)
            await self._notify(active, summary)

    async def _log_tail(self, active: ActiveRun) -> str:
        def read() -> str:
            try:
                lines = active.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as error:
                return f"(log unreadable: {error})"
            return "\n".join(lines[-LOG_TAIL_LINES:])

        return await asyncio.to_thread(read)


# ---------------------------------------------------------------------------
# Runtime hooks


async def _finish_even_if_cancelled(write: Awaitable[T]) -> T:
    """Await a database write that a cancellation of the caller must not cut off.

    The run's task is cancelled when the bot stops. A write cancelled halfway left its
    SQLite connection holding the write lock, so the next write, the one that marks the
    run failed, timed out with "database is locked". The write runs in its own task and
    finishes. A cancellation still reaches the caller, once the write has ended.
    """
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def get_supervisor(bot_context: BotContext) -> RetrainSupervisor:
    """Return the supervisor stored by `start_retrain_supervisor`."""
    supervisor = bot_context.extras.get(RETRAIN_KEY)
    if supervisor is None:
        raise RuntimeError("the retrain supervisor is not started; the runtime must call start_retrain_supervisor")
    return supervisor


async def start_retrain_supervisor(bot_context: BotContext, bot: Bot) -> RetrainSupervisor:
    """Clean up after a crash, fail stale runs and tell their admins, register the serving bundle, and start the supervisor."""
    models_dir = bot_context.settings.models_dir
    await asyncio.to_thread(models_dir.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(clean_model_dir, models_dir)
    stale = await bot_context.repository.fail_stale_retrain_runs()
    await register_serving_bundle(bot_context.repository, bot_context.service.bundle)
    await prune_old_bundles(bot_context.repository, models_dir, bot_context.settings.retrain_keep_old_models)
    supervisor = RetrainSupervisor(bot_context, bot)
    bot_context.extras[RETRAIN_KEY] = supervisor
    for run in stale:
        await _tell_stale_run(bot_context, bot, run)
    logger.info("retrain supervisor started; %d stale run(s) marked failed", len(stale))
    return supervisor


async def _tell_stale_run(bot_context: BotContext, bot: Bot, run: RetrainRun) -> None:
    stored = await bot_context.repository.get_user(run.admin_user_id)
    if stored is not None and stored.language:
        lang = stored.language
    else:
        lang = language_from_code(stored.language_code if stored is not None else None)
    try:
        await bot.send_message(run.admin_chat_id, text("admin_model.result.stale", lang, run_id=run.id))
    except TelegramError as error:
        logger.warning("could not tell chat %d that retrain run %d failed at restart: %s", run.admin_chat_id, run.id, error)


async def stop_retrain_supervisor(bot_context: BotContext) -> None:
    """End a run in progress (marked failed) before the classifier service closes."""
    supervisor = bot_context.extras.get(RETRAIN_KEY)
    if supervisor is not None:
        await supervisor.close()
