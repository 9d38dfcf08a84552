"""Maintenance commands for the saved photos.

    python -m storage orphans [--delete] [--min-age-s SECONDS] [--data-dir DIR] [--database-url URL]

`orphans` lists the photo files under DATA_DIR/photos that no prediction
references, one absolute path per line on stdout, and deletes them with
`--delete`. Such files are album photos saved before the database kept every
photo of an album, and files left behind by a crash between saving a photo and
storing its prediction.

DATA_DIR and DATABASE_URL are read as the bot reads them: from the environment,
else from `.env` in the current directory. DATA_DIR defaults to `./data` and
DATABASE_URL to `flowerbot.db` inside DATA_DIR. The flags override both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import inspect, make_url, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from storage.db import create_engine, default_database_url, new_session_factory
from storage.models import Prediction, PredictionImage

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DELETE_FAILED = 1
EXIT_USAGE = 2
PHOTOS_DIR_NAME = "photos"
# The bot saves a photo a moment before it stores the prediction that references it,
# so a fresh unreferenced file may be about to get its row. ImageStore.save also sets
# the modification time of a file that already exists, so a photo sent again counts
# as fresh.
# NOTE: between the age check and the deletion, a photo sent again can still reuse
# the file just before --delete removes it. Stop the bot first to rule that out.
DEFAULT_MIN_AGE_S = 3600.0
# Rows read per round trip while collecting the referenced paths.
ROWS_PER_FETCH = 10_000


class StorageSettings(BaseSettings):
    """DATA_DIR and DATABASE_URL, read from the environment and `.env` like the bot's settings."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None


class CommandError(Exception):
    """A configuration or database problem, printed as one line before exiting with status 2."""


@dataclass
class OrphanReport:
    """Photo files under the photos directory that no row references, and those kept because they are new."""

    orphans: list[Path] = field(default_factory=list)
    too_recent: list[Path] = field(default_factory=list)
    files: int = 0

    @property
    def orphan_bytes(self) -> int:
        return sum(_size(path) for path in self.orphans)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _iter_files(root: Path) -> Iterator[Path]:
    """Yield the regular files under `root`, skipping symbolic links because the image store never makes them."""
    for directory, _subdirectories, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


def find_orphans(photos_dir: Path, referenced_names: set[str], *, min_age_s: float, now: float | None = None) -> OrphanReport:
    """Return the files under `photos_dir` whose name no row's image path ends in.

    The image store names a file by the SHA-256 of its bytes, so the name alone
    identifies a photo. Matching names instead of whole paths keeps the photos
    of rows that were written before DATA_DIR moved. A file modified less than
    `min_age_s` seconds before `now` is reported in `too_recent` instead.
    """
    now = time.time() if now is None else now
    report = OrphanReport()
    for path in sorted(_iter_files(photos_dir)):
        report.files += 1
        if path.name in referenced_names:
            continue
        try:
            modified = path.stat().st_mtime
        except FileNotFoundError:
            continue
        (report.too_recent if now - modified < min_age_s else report.orphans).append(path)
    return report


def _has_prediction_images(connection: Connection) -> bool:
    return inspect(connection).has_table(PredictionImage.__tablename__)


def _check_sqlite_file(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).is_file():
        raise CommandError(
            f"database file {database} does not exist; set DATABASE_URL or DATA_DIR to the bot's, "
            "or pass --database-url"
        )


async def referenced_file_names(database_url: str) -> tuple[set[str], int]:
    """Return the file names of every image path in `predictions` and `prediction_images`, and the path count."""
    _check_sqlite_file(database_url)
    safe_url = make_url(database_url).render_as_string(hide_password=True)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            if not await connection.run_sync(_has_prediction_images):
                raise CommandError(
                    f"database {safe_url} has no prediction_images table; start the bot once, "
                    "which upgrades the database, or run: alembic -c migrations/alembic.ini upgrade head"
                )
        paths: set[str] = set()
        async with new_session_factory(engine)() as session:
            for column in (Prediction.image_path, PredictionImage.image_path):
                statement = select(column).distinct().execution_options(yield_per=ROWS_PER_FETCH)
                async for path in await session.stream_scalars(statement):
                    paths.add(path)
    except SQLAlchemyError as error:
        raise CommandError(f"reading image paths from {safe_url} failed: {error}") from error
    finally:
        await engine.dispose()
    return {Path(path).name for path in paths}, len(paths)


def delete_files(paths: list[Path]) -> tuple[int, int]:
    """Delete the files and return how many were deleted and how many failed. Each failure is logged."""
    deleted = failed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            failed += 1
            logger.error("deleting %s failed: %s", path, error)
            continue
        deleted += 1
    return deleted, failed


def run_orphans(args: argparse.Namespace) -> int:
    """List the unreferenced photo files, delete them with --delete, and return the exit status."""
    settings = StorageSettings()
    data_dir = Path(args.data_dir) if args.data_dir is not None else settings.data_dir
    database_url = args.database_url or settings.database_url or default_database_url(data_dir)
    photos_dir = (data_dir / PHOTOS_DIR_NAME).expanduser().resolve()
    if not photos_dir.is_dir():
        raise CommandError(f"photos directory {photos_dir} does not exist; set DATA_DIR to the bot's or pass --data-dir")

    referenced, path_count = asyncio.run(referenced_file_names(database_url))
    report = find_orphans(photos_dir, referenced, min_age_s=args.min_age_s)
    for path in report.orphans:
        print(path)
    logger.info(
        "%d of %d files under %s are referenced by no row (%.1f MB), checked against %d image paths",
        len(report.orphans),
        report.files,
        photos_dir,
        report.orphan_bytes / 1e6,
        path_count,
    )
    if report.too_recent:
        logger.info(
            "%d more unreferenced files are younger than %g s and are kept, because the bot may be about to store their rows",
            len(report.too_recent),
            args.min_age_s,
        )
    if not args.delete:
        return EXIT_OK

    deleted, failed = delete_files(report.orphans)
    logger.info("deleted %d unreferenced files, %d failed", deleted, failed)
    return EXIT_DELETE_FAILED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m storage", description="Maintenance commands for saved photos.")
    commands = parser.add_subparsers(dest="command", required=True)

    orphans = commands.add_parser(
        "orphans",
        help="list (and delete) photo files that no prediction references",
        description="List the files under DATA_DIR/photos that no predictions or prediction_images row references, "
        "one path per line; with --delete, delete them.",
    )
    orphans.add_argument("--delete", action="store_true", help="delete the files listed")
    orphans.add_argument(
        "--min-age-s",
        type=float,
        default=DEFAULT_MIN_AGE_S,
        help="keep unreferenced files modified less than this many seconds ago, "
        f"because the bot stores a photo's row just after saving it (default: {DEFAULT_MIN_AGE_S:g})",
    )
    orphans.add_argument("--data-dir", help="the bot's DATA_DIR (default: DATA_DIR from the environment or .env, else ./data)")
    orphans.add_argument(
        "--database-url",
        help="the bot's DATABASE_URL (default: DATABASE_URL from the environment or .env, else flowerbot.db in DATA_DIR)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The engine's own set-up messages are not useful here.
    logging.getLogger("storage.db").setLevel(logging.WARNING)

    if args.command == "orphans":
        if args.min_age_s < 0:
            parser.error(f"--min-age-s must be 0 or more, got {args.min_age_s:g}")
        try:
            return run_orphans(args)
        except CommandError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE

    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
