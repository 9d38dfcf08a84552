"""ImageStore: content-addressed, atomic, idempotent photo files."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from PIL import Image

from storage.images import ImageStore


def _jpeg_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _files_under(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_save_stores_by_sha256(tmp_path):
    store = ImageStore(tmp_path / "images")
    data = _jpeg_bytes((200, 30, 40))
    sha256 = hashlib.sha256(data).hexdigest()

    stored = store.save(data, ".jpg")

    assert stored.sha256 == sha256
    assert stored.size == len(data)
    assert stored.path == tmp_path / "images" / sha256[:2] / sha256[2:4] / f"{sha256}.jpg"
    assert stored.path.read_bytes() == data


def test_save_same_bytes_twice_keeps_one_file(tmp_path):
    store = ImageStore(tmp_path)
    data = _jpeg_bytes((10, 200, 30))

    first = store.save(data, ".jpg")
    second = store.save(data, ".jpg")

    assert first == second
    assert _files_under(tmp_path) == [str(first.path.relative_to(tmp_path))]


def test_saving_again_refreshes_modification_time(tmp_path):
    store = ImageStore(tmp_path)
    data = _jpeg_bytes((90, 90, 200))
    stored = store.save(data, ".jpg")
    day_ago = stored.path.stat().st_mtime - 86400
    os.utime(stored.path, (day_ago, day_ago))

    store.save(data, ".jpg")

    assert stored.path.stat().st_mtime > day_ago + 3600


def test_different_bytes_get_different_files(tmp_path):
    store = ImageStore(tmp_path)

    first = store.save(_jpeg_bytes((255, 0, 0)), ".jpg")
    second = store.save(_jpeg_bytes((0, 0, 255)), ".jpg")

    assert first.path != second.path
    assert len(_files_under(tmp_path)) == 2


def test_suffix_is_normalized(tmp_path):
    store = ImageStore(tmp_path)

    stored = store.save(b"not checked here", "PNG")

    assert stored.path.suffix == ".png"


@pytest.mark.parametrize("suffix", ["", ".", ".j/pg", "../x", ".toolongsuffix"])
def test_invalid_suffix_is_rejected(tmp_path, suffix):
    store = ImageStore(tmp_path)

    with pytest.raises(ValueError, match="suffix"):
        store.save(b"data", suffix)


def test_empty_image_is_rejected(tmp_path):
    store = ImageStore(tmp_path)

    with pytest.raises(ValueError, match="empty"):
        store.save(b"", ".jpg")

    assert _files_under(tmp_path) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = ImageStore(tmp_path)

    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.save(_jpeg_bytes((1, 2, 3)), ".jpg")

    assert _files_under(tmp_path) == []


def test_read_open_and_exists(tmp_path):
    store = ImageStore(tmp_path)
    data = _jpeg_bytes((50, 60, 70))
    stored = store.save(data, ".jpg")
    relative = stored.path.relative_to(tmp_path)

    assert store.read(stored.path) == data
    assert store.read(str(relative)) == data
    with store.open(stored.path) as image_file:
        assert Image.open(image_file).size == (32, 24)
    assert store.exists(stored.path)


def test_delete_removes_file_once(tmp_path):
    store = ImageStore(tmp_path)
    stored = store.save(_jpeg_bytes((5, 5, 5)), ".jpg")

    assert store.delete(str(stored.path)) is True
    assert not stored.path.exists()
    assert store.delete(str(stored.path)) is False


def test_paths_outside_root_are_rejected(tmp_path):
    store = ImageStore(tmp_path / "images")
    outside = tmp_path / "secret.txt"
    outside.write_text("keep me")

    with pytest.raises(ValueError, match="outside"):
        store.delete(outside)
    with pytest.raises(ValueError, match="outside"):
        store.read("../secret.txt")

    assert outside.read_text() == "keep me"
