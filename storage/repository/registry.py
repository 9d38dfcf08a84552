"""Queries on the model registry and on /retrain runs."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import MODEL_STATUSES, RETRAIN_FINISHED_STATUSES, ModelVersion, RetrainRun, utc_now
from storage.repository.base import NotFoundError, RepositoryBase, serialize_transactions

logger = logging.getLogger(__name__)

_RETRAIN_UPDATABLE_FIELDS = frozenset({"phase", "progress_message_id", "candidate_version", "metrics", "error"})


class RegistryQueries(RepositoryBase):
    """Model versions (one serving at a time) and retrain runs (one running at a time)."""

    async def register_model(
        self,
        version: str,
        path: str,
        metrics: dict[str, Any] | None = None,
        status: str | None = None,
        parent_version: str | None = None,
        created_at: datetime | None = None,
    ) -> ModelVersion:
        """Add a model version to the registry, or update a registered one, and return it.

        A new version starts as ``status``, or 'candidate' when None. A
        registered version gets the new ``path``, and ``metrics``,
        ``parent_version`` and ``status`` when they are given. A 'serving'
        status goes through the same promotion as :meth:`set_serving`.
        ``created_at`` is when the model was made, such as the bundle's own
        time stamp. When it is None, a new row takes the time of registration.
        """
        if status is not None and status not in MODEL_STATUSES:
            raise ValueError(f"model status must be one of {MODEL_STATUSES}, got {status!r}")

        async def work(session: AsyncSession) -> ModelVersion:
            model = await session.get(ModelVersion, version)
            if model is None:
                model = ModelVersion(
                    version=version,
                    path=path,
                    status="candidate",
                    metrics=dict(metrics or {}),
                    parent_version=parent_version,
                )
                if created_at is not None:
                    model.created_at = created_at
                session.add(model)
                logger.info("registered model %s at %s", version, path)
            else:
                model.path = path
                if metrics is not None:
                    model.metrics = dict(metrics)
                if parent_version is not None:
                    model.parent_version = parent_version

            if status == "serving":
                await session.flush()
                return await self._promote(session, version)
            if status is not None and status != model.status:
                if model.status == "serving":
                    logger.warning("model %s stops serving (now %s); no model is marked serving", version, status)
                model.status = status
            await session.flush()
            return model

        return await self._transaction("register_model", work, write=True, conflict_retries=1)

    @staticmethod
    async def _promote(session: AsyncSession, version: str) -> ModelVersion:
        """Make ``version`` the serving model and retire the one serving before."""
        # Row locks alone let a third concurrent promotion miss the row the
        # second one just made serving, so promotions take one lock in turn.
        await serialize_transactions(session, "model_versions.promote")
        target = await session.get(ModelVersion, version, with_for_update=True)
        if target is None:
            raise NotFoundError(f"model version {version!r} is not registered")
        statement = select(ModelVersion).where(ModelVersion.status == "serving").with_for_update()
        serving = await session.scalar(statement)
        if serving is not None and serving.version == version:
            return serving
        if serving is not None:
            serving.status = "retired"
            # Flush first, or the unique partial index rejects the second serving row.
            await session.flush()
        target.status = "serving"
        target.promoted_at = utc_now()
        await session.flush()
        logger.info(
            "model %s is serving; %s retired", version, serving.version if serving is not None else "no model"
        )
        return target

    async def set_serving(self, version: str) -> ModelVersion:
        """Make ``version`` the one serving model; the previous serving model becomes 'retired'."""

        async def work(session: AsyncSession) -> ModelVersion:
            return await self._promote(session, version)

        return await self._transaction("set_serving", work, write=True, conflict_retries=1)

    async def serving_model(self) -> ModelVersion | None:
        """Return the serving model, or None when none is registered as serving."""

        async def work(session: AsyncSession) -> ModelVersion | None:
            return await session.scalar(select(ModelVersion).where(ModelVersion.status == "serving"))

        return await self._transaction("serving_model", work, write=False)

    async def previous_model(self) -> ModelVersion | None:
        """Return the model to roll back to: the retired one that served most recently, or None."""

        async def work(session: AsyncSession) -> ModelVersion | None:
            statement = (
                select(ModelVersion)
                .where(ModelVersion.status == "retired", ModelVersion.promoted_at.is_not(None))
                .order_by(ModelVersion.promoted_at.desc())
                .limit(1)
            )
            return await session.scalar(statement)

        return await self._transaction("previous_model", work, write=False)

    async def get_model(self, version: str) -> ModelVersion | None:
        """Return the registered model version, or None."""

        async def work(session: AsyncSession) -> ModelVersion | None:
            return await session.get(ModelVersion, version)

        return await self._transaction("get_model", work, write=False)

    async def list_models(self) -> list[ModelVersion]:
        """Return every registered model, oldest first."""

        async def work(session: AsyncSession) -> list[ModelVersion]:
            statement = select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.version)
            return list(await session.scalars(statement))

        return await self._transaction("list_models", work, write=False)

    async def set_model_status(
        self, version: str, status: str, metrics: dict[str, Any] | None = None
    ) -> ModelVersion:
        """Set a model's status, and replace its metrics when given.

        'serving' goes through the same promotion as :meth:`set_serving`.
        """
        if status not in MODEL_STATUSES:
            raise ValueError(f"model status must be one of {MODEL_STATUSES}, got {status!r}")

        async def work(session: AsyncSession) -> ModelVersion:
            model = await session.get(ModelVersion, version)
            if model is None:
                raise NotFoundError(f"model version {version!r} is not registered")
            if metrics is not None:
                model.metrics = dict(metrics)
            if status == "serving":
                return await self._promote(session, version)
            if model.status == "serving":
                logger.warning("model %s stops serving (now %s); no model is marked serving", version, status)
            model.status = status
            await session.flush()
            return model

        return await self._transaction("set_model_status", work, write=True, conflict_retries=1)

    @staticmethod
    async def _running_retrain(session: AsyncSession) -> RetrainRun | None:
        return await session.scalar(select(RetrainRun).where(RetrainRun.status == "running"))

    async def start_retrain_run(self, admin_user_id: int, admin_chat_id: int) -> RetrainRun | None:
        """Record a new running retrain, or return None when one is running already."""

        async def work(session: AsyncSession) -> RetrainRun | None:
            running = await self._running_retrain(session)
            if running is not None:
                logger.info("retrain requested by %d while run %d is running", admin_user_id, running.id)
                return None
            run = RetrainRun(admin_user_id=admin_user_id, admin_chat_id=admin_chat_id, status="running")
            session.add(run)
            await session.flush()
            return run

        # A concurrent start on PostgreSQL hits the unique partial index; the
        # rerun then finds that run and returns None.
        return await self._transaction("start_retrain_run", work, write=True, conflict_retries=1)

    async def get_retrain_run(self, run_id: int) -> RetrainRun | None:
        """Return the retrain run, or None."""

        async def work(session: AsyncSession) -> RetrainRun | None:
            return await session.get(RetrainRun, run_id)

        return await self._transaction("get_retrain_run", work, write=False)

    async def active_retrain_run(self) -> RetrainRun | None:
        """Return the running retrain, or None."""
        return await self._transaction("active_retrain_run", self._running_retrain, write=False)

    async def latest_retrain_run(self) -> RetrainRun | None:
        """Return the most recently started retrain run, or None."""

        async def work(session: AsyncSession) -> RetrainRun | None:
            statement = select(RetrainRun).order_by(RetrainRun.started_at.desc(), RetrainRun.id.desc()).limit(1)
            return await session.scalar(statement)

        return await self._transaction("latest_retrain_run", work, write=False)

    async def update_retrain_run(self, run_id: int, **fields: Any) -> RetrainRun:
        """Update progress fields of a run: phase, progress_message_id, candidate_version, metrics, error.

        The status changes only through :meth:`finish_retrain_run`.
        """
        unknown = set(fields) - _RETRAIN_UPDATABLE_FIELDS
        if unknown:
            raise ValueError(
                f"cannot update retrain run fields {sorted(unknown)}; allowed: {sorted(_RETRAIN_UPDATABLE_FIELDS)}"
            )

        async def work(session: AsyncSession) -> RetrainRun:
            run = await session.get(RetrainRun, run_id)
            if run is None:
                raise NotFoundError(f"retrain run {run_id} does not exist")
            for name, value in fields.items():
                setattr(run, name, value)
            await session.flush()
            return run

        return await self._transaction("update_retrain_run", work, write=True)

    async def finish_retrain_run(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        candidate_version: str | None = None,
        phase: str | None = None,
    ) -> RetrainRun:
        """Set the final status of a running run and its finish time.

        A run that has finished already keeps its first final status (for
        example 'cancelled' when the process then exits with an error), and is
        returned unchanged.
        """
        if status not in RETRAIN_FINISHED_STATUSES:
            raise ValueError(f"final retrain status must be one of {RETRAIN_FINISHED_STATUSES}, got {status!r}")

        async def work(session: AsyncSession) -> RetrainRun:
            run = await session.get(RetrainRun, run_id)
            if run is None:
                raise NotFoundError(f"retrain run {run_id} does not exist")
            if run.status != "running":
                logger.warning("retrain run %d already finished as %s; not setting %s", run_id, run.status, status)
                return run
            run.status = status
            run.finished_at = utc_now()
            if error is not None:
                run.error = error
            if metrics is not None:
                run.metrics = metrics
            if candidate_version is not None:
                run.candidate_version = candidate_version
            if phase is not None:
                run.phase = phase
            await session.flush()
            logger.info("retrain run %d finished: %s", run_id, status)
            return run

        return await self._transaction("finish_retrain_run", work, write=True)

    async def fail_stale_retrain_runs(
        self, error: str = "the bot restarted while this run was in progress"
    ) -> list[RetrainRun]:
        """Mark every 'running' run as failed; call at start-up, when no run can still be alive.

        Returns the runs it changed, so the caller can tell their admins.
        """

        async def work(session: AsyncSession) -> list[RetrainRun]:
            runs = list(await session.scalars(select(RetrainRun).where(RetrainRun.status == "running")))
            now = utc_now()
            for run in runs:
                run.status = "failed"
                run.error = error
                run.finished_at = now
                logger.warning("retrain run %d was still marked running; marked failed", run.id)
            await session.flush()
            return runs

        return await self._transaction("fail_stale_retrain_runs", work, write=True)
