"""Photos saved by content hash, for /history, /forget and retraining.

A photo lives at ``root/ab/cd/<sha256><suffix>``, where ``ab`` and ``cd`` are
the first two pairs of hex digits of its SHA-256, so no directory grows too
large. The same bytes always map to the same file, so saving twice stores one
copy. The methods do blocking file I/O; call them through
``asyncio.to_thread`` from an event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_SUFFIX_PATTERN = re.compile(r"^\.[a-z0-9]{1,10}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredImage:
    """A saved photo: its absolute path, lowercase hex SHA-256 and size in bytes."""

    path: Path
    sha256: str
    size: int


class ImageStore:
    """Content-addressed photo files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def path_for(self, sha256: str, suffix: str = ".jpg") -> Path:
        """Return where the image with this hash and suffix is stored."""
        if not _SHA256_PATTERN.match(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / f"{sha256}{_normalize_suffix(suffix)}"

    def save(self, data: bytes, suffix: str = ".jpg") -> StoredImage:
        """Store ``data`` by its SHA-256 and return where it is.

        The bytes go to a temporary file in the target directory, are synced
        to disk and then renamed into place, so a crash never leaves a partial
        image under the final name. When the file exists already it is kept,
        and its modification time is set to now, so `python -m storage orphans`
        (which skips young files) does not take a photo sent again for unused.
        """
        if not data:
            raise ValueError("cannot store an empty image")
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256, suffix)
        if path.is_file() and path.stat().st_size == len(data):
            try:
                os.utime(path)
            except OSError as error:
                logger.warning("could not update the modification time of %s: %s", path, error)
            return StoredImage(path=path, sha256=sha256, size=len(data))

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(descriptor, "wb") as temporary:
                temporary.write(data)
                temporary.flush()
                os.fsync(temporary.fileno())
            os.replace(temporary_name, path)
        except BaseException:
            Path(temporary_name).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        logger.debug("saved image %s (%d bytes)", path, len(data))
        return StoredImage(path=path, sha256=sha256, size=len(data))

    def resolve(self, path: str | Path) -> Path:
        """Return the absolute path of a stored image given as absolute or relative to the root.

        Raises ValueError for a path outside the root, so a path read from the
        database cannot make the store touch other files.
        """
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        candidate = candidate.resolve()
        if not candidate.is_relative_to(self.root):
            raise ValueError(f"image path {str(path)!r} is outside the image store {str(self.root)!r}")
        return candidate

    def open(self, path: str | Path) -> BinaryIO:
        """Open a stored image for reading in binary mode."""
        return self.resolve(path).open("rb")

    def read(self, path: str | Path) -> bytes:
        """Return the bytes of a stored image."""
        return self.resolve(path).read_bytes()

    def exists(self, path: str | Path) -> bool:
        """Return True when the stored image file exists."""
        return self.resolve(path).is_file()

    def delete(self, path: str | Path) -> bool:
        """Delete a stored image; returns False when it was already gone.

        Empty ``ab/cd`` directories are left in place, because a concurrent
        save may be about to write into them.
        """
        resolved = self.resolve(path)
        try:
            resolved.unlink()
        except FileNotFoundError:
            return False
        logger.debug("deleted image %s", resolved)
        return True


def _normalize_suffix(suffix: str) -> str:
    suffix = suffix.lower()
    if not suffix.startswith("."):
        suffix = f".{suffix}"
    if not _SUFFIX_PATTERN.match(suffix):
        raise ValueError(f"image suffix must be a dot and 1 to 10 letters or digits, e.g. '.jpg', got {suffix!r}")
    return suffix


def _fsync_directory(directory: Path) -> None:
    """Sync a directory so that a rename inside it survives a power loss (POSIX only)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
