"""Bot settings, read from the environment and `.env` through pydantic-settings."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A Bot API token as @BotFather issues it: the bot's numeric id, a colon, then the secret part.
_TOKEN_FORMAT = re.compile(r"\d+:\S+")
# Micro-batch size of the torch backend when BATCH_MAX_SIZE is unset.
DEFAULT_TORCH_BATCH_MAX_SIZE = 16


class Settings(BaseSettings):
    """All runtime settings. Each field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Telegram
    telegram_bot_token: SecretStr
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_path: str = "/telegram/webhook"
    # Secret for signing callback data. When unset, a key is derived from the bot token.
    callback_secret: SecretStr | None = None

    # Storage
    data_dir: Path = Path("./data")
    database_url: str | None = None
    # Handlings an image update gets before a restart drops it instead of replaying it again:
    # the first one plus the replays after crashes. It ends a loop of restarts on a photo
    # that kills the process (out of memory, for example).
    inbox_max_attempts: int = Field(default=3, ge=1)

    # Model and inference
    model_path: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["torch", "onnx"] = "torch"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Unset means `resolved_batch_max_size`: the default measured best for BACKEND.
    batch_max_size: int | None = Field(default=None, ge=1, le=256)
    batch_max_wait_ms: float = Field(default=5.0, ge=0.0, le=1000.0)
    inference_workers: int = Field(default=1, ge=1, le=16)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    # Calibrated top-1 probability from which an answer says "sure" or "likely" (else "unsure").
    confidence_sure: float = Field(default=0.80, gt=0.0, le=1.0)
    confidence_likely: float = Field(default=0.50, gt=0.0, le=1.0)
    # Seconds without a new photo after which an album (photos with one media_group_id)
    # is classified. Telegram delivers an album's photos as separate updates within a moment.
    album_quiet_s: float = Field(default=1.0, gt=0.0, le=30.0)

    # Abuse limits: photos per person per minute.
    rate_limit_per_minute: int = Field(default=20, ge=1)

    # HTTP API. HTTP_PORT=0 turns the server off.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    api_token: SecretStr | None = None
    # When set, GET /metrics requires `Authorization: Bearer <METRICS_TOKEN>`, the
    # header Prometheus sends for a scrape job with `authorization: {credentials: ...}`.
    metrics_token: SecretStr | None = None
    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    # Logging
    log_level: str = "INFO"
    log_json: bool = False

    # Retraining
    retrain_base_data: str | None = None
    retrain_epochs: int = Field(default=10, ge=1)
    retrain_batch_size: int = Field(default=64, ge=1)
    retrain_lr: float = Field(default=5e-4, gt=0.0)
    retrain_views: int = Field(default=2, ge=1)
    retrain_holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    retrain_seed: int = 0
    # A recipe file (JSON or YAML, as `python -m training train --config`) under the RETRAIN_* values above.
    retrain_recipe_config: Path | None = None
    # A candidate passes a gate split with up to floor(tolerance * photos) fewer correct predictions than the serving model.
    retrain_gate_tolerance: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Seconds between edits of the progress message; Telegram allows about 20 messages a minute in a group.
    retrain_progress_interval_s: float = Field(default=3.0, ge=1.0)
    retrain_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Torch threads of the training process; unset leaves torch's default (every usable CPU).
    retrain_threads: int | None = Field(default=None, ge=1)
    # Newest rejected and retired bundles kept on disk per status. The serving bundle and
    # the one /rollback returns to are always kept, and older ones are deleted.
    retrain_keep_old_models: int = Field(default=3, ge=0)

    @model_validator(mode="after")
    def _check_confidence_order(self) -> Settings:
        if self.confidence_likely > self.confidence_sure:
            raise ValueError(
                f"CONFIDENCE_LIKELY ({self.confidence_likely}) must not exceed CONFIDENCE_SURE ({self.confidence_sure})"
            )
        return self

    @field_validator("telegram_bot_token")
    @classmethod
    def _check_token_format(cls, value: SecretStr) -> SecretStr:
        """Reject a token that cannot be one before anything starts; the message never repeats the token."""
        if not _TOKEN_FORMAT.fullmatch(value.get_secret_value()):
            raise ValueError("expected <bot id>:<secret>, the form of the token @BotFather gives")
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        """Accept a comma-separated string such as `123, 456` as well as a list of ids."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            try:
                return frozenset(int(part) for part in parts)
            except ValueError as error:
                raise ValueError(f"ADMIN_IDS must be comma-separated integers, got {value!r}") from error
        return value

    @property
    def resolved_database_url(self) -> str:
        """Return DATABASE_URL, or a SQLite file in DATA_DIR when it is unset."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'flowerbot.db').resolve()}"

    @property
    def resolved_batch_max_size(self) -> int:
        """Return BATCH_MAX_SIZE, or when it is unset 16 for BACKEND=torch and 1 for BACKEND=onnx.

        On the CPU (the only device the ONNX backend uses), ONNX Runtime ran no faster
        per image at batch 8 than at batch 1, so micro-batching only added its wait
        there (benchmarks.throughput and benchmarks.latency in docs/benchmarks.md).
        """
        if self.batch_max_size is not None:
            return self.batch_max_size
        return 1 if self.backend == "onnx" else DEFAULT_TORCH_BATCH_MAX_SIZE

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return Settings()  # type: ignore[call-arg]
