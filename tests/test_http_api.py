"""The HTTP API against a running server on 127.0.0.1.

Each test starts `bot.http_api.start_http_server` on a free port, around a real
`ClassifierService` (a random-init ConvNeXt-Tiny bundle on the CPU) and a real database
migrated with Alembic, and talks to it with an aiohttp client. Webhook tests register the
webhook with the Telegram emulator, which then delivers updates to the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hashlib
import io
import logging
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from telegram.ext import Application, ApplicationBuilder

from bot.context import BotContext
from bot.http_api import bound_addresses, start_http_server, stop_http_server
from bot.metrics import Metrics
from bot.settings import Settings
from bot.webhook import SECRET_HEADER, start_webhook, stop_webhook, webhook_secret
from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from classifier.service import ClassifierService
from storage.db import create_engine, new_session_factory, upgrade_database
from storage.images import ImageStore
from storage.repository import Repository
from tests.emulator import DEFAULT_TOKEN, TelegramEmulator, make_user, private_chat

CLASS_NAMES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
API_TOKEN = "test-api-token-5d1f0c"


@dataclass
class ServerRuntime:
    """The two attributes of `bot.runtime.BotRuntime` that the HTTP server reads."""

    context: BotContext
    application: Application | None = None


@dataclass
class RunningServer:
    runtime: ServerRuntime
    runner: Any
    base_url: str
    metrics: Metrics
    client: aiohttp.ClientSession
    stopped: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.runtime.context.settings

    @property
    def service(self) -> ClassifierService:
        return self.runtime.context.service

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await stop_http_server(self.runner)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init bundle for the five flowers5 classes, shared by the tests of this module."""
    path = tmp_path_factory.mktemp("bundle") / "flowers5-random"
    new_random_bundle(LabelSet.from_names(CLASS_NAMES), path, seed=7)
    return path


@pytest.fixture(scope="module")
def shared_service(bundle_dir: Path) -> Iterator[ClassifierService]:
    """One classifier for the module's servers; loading ConvNeXt-Tiny per test would take seconds each.

    The service is not tied to an event loop (each request carries its own), so the
    function-scoped loops of the tests can share it.
    """
    # Warm-up compiles the traced graphs, so results do not depend on how many requests
    # the module's earlier tests sent.
    service = ClassifierService.from_path(bundle_dir, backend_kind="torch", device="cpu", warmup=True)
    yield service
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(asyncio.run, service.close()).result(timeout=60)


@pytest.fixture
def migrated_database_url(database_url: str) -> str:
    upgrade_database(database_url)
    return database_url


@pytest.fixture
def photo_bytes(flowers5_val_photos: list[Path]) -> bytes:
    return flowers5_val_photos[0].read_bytes()


def make_settings(tmp_path: Path, bundle_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": DEFAULT_TOKEN,
        "model_path": bundle_dir,
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "backend": "torch",
        "device": "cpu",
        "http_host": "127.0.0.1",
        "http_port": 0,
    }
    values.update(overrides)
    # _env_file=None: a developer's .env must not change what the tests run against.
    return Settings(_env_file=None, **values)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def start_server(
    tmp_path: Path, bundle_dir: Path, migrated_database_url: str, shared_service: ClassifierService
) -> AsyncIterator[ServerFactory]:
    """Return `await start_server(**settings_overrides)`, which starts a server; all are stopped at the end.

    A server uses the module's shared classifier unless `service=` gives one, which is
    then closed at the end.
    """
    servers: list[RunningServer] = []
    owned_services: list[ClassifierService] = []
    engines = []

    async def start(
        *,
        application: Application | None = None,
        service: ClassifierService | None = None,
        **overrides: Any,
    ) -> RunningServer:
        settings = make_settings(tmp_path, bundle_dir, migrated_database_url, **overrides)
        if service is None:
            service = shared_service
        else:
            owned_services.append(service)
        engine = create_engine(settings.resolved_database_url)
        engines.append(engine)
        context = BotContext(
            settings=settings,
            service=service,
            repository=Repository(new_session_factory(engine)),
            images=ImageStore(settings.photos_dir),
        )
        runtime = ServerRuntime(context=context, application=application)
        metrics = Metrics()
        runner = await start_http_server(runtime, metrics=metrics)
        host, port = bound_addresses(runner)[0]
        server = RunningServer(
            runtime=runtime,
            runner=runner,
            base_url=f"http://{host}:{port}",
            metrics=metrics,
            client=aiohttp.ClientSession(),
        )
        servers.append(server)
        return server

    yield start

    for server in servers:
        await server.client.close()
        await server.stop()
    for service in owned_services:
        await service.close()
    for engine in engines:
        await engine.dispose()


def metric_value(exposition: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Return the sample `name` with `labels` from a Prometheus text exposition, 0 when absent."""
    wanted = labels or {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in wanted.items()):
                return sample.value
    return 0.0


async def scrape(server: RunningServer) -> str:
    async with server.client.get(f"{server.base_url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


def assert_json_error(payload: dict[str, Any], error: str) -> None:
    assert set(payload) >= {"error", "detail"}, payload
    assert payload["error"] == error, payload
    assert isinstance(payload["detail"], str) and payload["detail"], payload


def jpeg_bytes(size: tuple[int, int] = (320, 240), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# -- /predict ------------------------------------------------------------------


async def test_predict_raw_photo(start_server: ServerFactory, photo_bytes: bytes) -> None:
    server = await start_server()

    async with server.client.post(f"{server.base_url}/predict?k=3", data=photo_bytes) as response:
        assert response.status == 200
        payload = await response.json()

    assert payload["model_version"] == server.service.version
    assert payload["k"] == 3
    assert payload["image_sha256"] == hashlib.sha256(photo_bytes).hexdigest()
    predictions = payload["predictions"]
    assert [item["rank"] for item in predictions] == [1, 2, 3]
    class_ids = [item["class_id"] for item in predictions]
    assert len(set(class_ids)) == 3
    assert set(class_ids) <= set(CLASS_NAMES)
    probabilities = [item["probability"] for item in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= probability <= 1.0 for probability in probabilities)
    assert sum(probabilities) <= 1.0 + 1e-6
    for item in predictions:
        assert item["index"] == CLASS_NAMES.index(item["class_id"])
        assert set(item["names"]) == {"en", "zh"}
        assert item["name"] == item["names"]["en"]
        assert item["names"]["zh"], item


async def test_predict_multipart_matches_raw(start_server: ServerFactory, photo_bytes: bytes) -> None:
    server = await start_server()

    async with server.client.post(f"{server.base_url}/predict?k=5", data=photo_bytes) as response:
        assert response.status == 200
        raw = await response.json()
    form = aiohttp.FormData()
    form.add_field("comment", "a field before the image is skipped")
    form.add_field("file", photo_bytes, filename="rose.jpg", content_type="image/jpeg")
    async with server.client.post(f"{server.base_url}/predict?k=5", data=form) as response:
        assert response.status == 200
        multipart = await response.json()

    assert len(multipart["predictions"]) == 5
    assert multipart["image_sha256"] == raw["image_sha256"]
    assert [item["class_id"] for item in multipart["predictions"]] == [item["class_id"] for item in raw["predictions"]]
    for left, right in zip(multipart["predictions"], raw["predictions"], strict=True):
        assert left["probability"] == pytest.approx(right["probability"], abs=1e-5)


@pytest.mark.parametrize("query", ["", "?k=", "?k=0", "?k=6", "?k=-1", "?k=three", "?k=2.5"])
async def test_predict_invalid_k(start_server: ServerFactory, query: str) -> None:
    server = await start_server()

    async with server.client.post(f"{server.base_url}/predict{query}", data=jpeg_bytes()) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        payload = await response.json()

    assert_json_error(payload, "invalid_request")
    assert "k" in payload["detail"]


async def test_predict_empty_body(start_server: ServerFactory) -> None:
    server = await start_server()

    async with server.client.post(f"{server.base_url}/predict?k=3", data=b"") as response:
        assert response.status == 400
        assert_json_error(await response.json(), "empty")


async def test_predict_multipart_errors(start_server: ServerFactory) -> None:
    server = await start_server()

    form = aiohttp.FormData()
    form.add_field("photo", jpeg_bytes(), filename="x.jpg", content_type="image/jpeg")
    async with server.client.post(f"{server.base_url}/predict?k=3", data=form) as response:
        assert response.status == 400
        payload = await response.json()
    assert_json_error(payload, "invalid_request")
    assert "'file'" in payload["detail"]

    garbage = b"this is not a multipart body at all"
    headers = {"Content-Type": "multipart/form-data; boundary=xyz123"}
    async with server.client.post(f"{server.base_url}/predict?k=3", data=garbage, headers=headers) as response:
        assert response.status == 400
        assert_json_error(await response.json(), "invalid_request")


async def test_predict_body_over_limit(start_server: ServerFactory, photo_bytes: bytes) -> None:
    limit = len(photo_bytes) + 1024
    server = await start_server(max_request_bytes=limit)
    too_big = photo_bytes + b"\0" * 2048

    async with server.client.post(f"{server.base_url}/predict?k=3", data=photo_bytes) as response:
        assert response.status == 200

    async with server.client.post(f"{server.base_url}/predict?k=3", data=too_big) as response:
        assert response.status == 413
        payload = await response.json()
    assert_json_error(payload, "payload_too_large")
    assert str(limit) in payload["detail"]

    async def chunked_body() -> AsyncIterator[bytes]:
        # A generator body is sent with chunked encoding, so no Content-Length announces the size.
        for start in range(0, len(too_big), 8192):
            yield too_big[start : start + 8192]

    async with server.client.post(f"{server.base_url}/predict?k=3", data=chunked_body()) as response:
        assert response.status == 413
        assert_json_error(await response.json(), "payload_too_large")

    form = aiohttp.FormData()
    form.add_field("file", too_big, filename="big.jpg", content_type="image/jpeg")
    async with server.client.post(f"{server.base_url}/predict?k=3", data=form) as response:
        assert response.status == 413
        assert_json_error(await response.json(), "payload_too_large")


async def test_predict_default_limit_fits_phone_photo(start_server: ServerFactory) -> None:
    server = await start_server()
    assert server.settings.max_request_bytes >= 10 * 1024 * 1024
    # 10 MB that is not an image: the size is accepted, and the content is then rejected.
    body = b"%PDF-1.7\n" + b"0" * (10 * 1024 * 1024)

    async with server.client.post(f"{server.base_url}/predict?k=3", data=io.BytesIO(body)) as response:
        assert response.status == 415
        assert_json_error(await response.json(), "not_image")


async def test_predict_non_image(start_server: ServerFactory) -> None:
    server = await start_server()

    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    async with server.client.post(f"{server.base_url}/predict?k=3", data=pdf) as response:
        assert response.status == 415
        assert_json_error(await response.json(), "not_image")

    icon = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(icon, "ICO")
    async with server.client.post(f"{server.base_url}/predict?k=3", data=icon.getvalue()) as response:
        assert response.status == 415
        assert_json_error(await response.json(), "unsupported")


async def test_predict_truncated_image(start_server: ServerFactory) -> None:
    server = await start_server()
    whole = jpeg_bytes((640, 480))

    async with server.client.post(f"{server.base_url}/predict?k=3", data=whole[: len(whole) // 2]) as response:
        assert response.status == 422
        assert_json_error(await response.json(), "truncated")


async def test_predict_compressed_body(start_server: ServerFactory) -> None:
    server = await start_server()
    url = f"{server.base_url}/predict?k=3"
    image = jpeg_bytes()
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    encoded = {
        "gzip": gzip.compress(image),
        "deflate": zlib.compress(image),
        "raw deflate": raw_deflate.compress(image) + raw_deflate.flush(),
    }

    async with server.client.post(url, data=image) as response:
        expected = await response.json()
    for name, body in encoded.items():
        coding = "gzip" if name == "gzip" else "deflate"
        async with server.client.post(url, data=body, headers={"Content-Encoding": coding}) as response:
            assert response.status == 200, name
            payload = await response.json()
        assert payload["image_sha256"] == expected["image_sha256"], name


async def test_predict_bad_compressed_body(start_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    limit = 256 * 1024
    server = await start_server(max_request_bytes=limit)
    url = f"{server.base_url}/predict?k=3"
    image = jpeg_bytes()
    caplog.set_level(logging.INFO)

    cases = [
        ("not gzip", image, "gzip", 400, "invalid_request"),
        ("truncated gzip", gzip.compress(image)[: len(image) // 3], "gzip", 400, "invalid_request"),
        ("brotli", image, "br", 415, "unsupported_encoding"),
        ("two codings", gzip.compress(gzip.compress(image)), "gzip, gzip", 415, "unsupported_encoding"),
        ("bomb", gzip.compress(b"\0" * (limit * 40)), "gzip", 413, "payload_too_large"),
    ]
    for name, body, coding, status, error in cases:
        assert len(body) < limit, name
        async with server.client.post(url, data=body, headers={"Content-Encoding": coding}) as response:
            assert response.status == status, name
            assert_json_error(await response.json(), error)

    form = aiohttp.FormData()
    form.add_field("file", image, filename="x.jpg", content_type="image/jpeg")
    async with server.client.post(url, data=form, headers={"Content-Encoding": "gzip"}) as response:
        assert response.status == 415
        assert_json_error(await response.json(), "unsupported_encoding")

    # The same keep-alive client still gets answers after the rejected bodies.
    async with server.client.post(url, data=image) as response:
        assert response.status == 200
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


async def test_predict_decompressed_over_limit(start_server: ServerFactory) -> None:
    limit = 256 * 1024
    server = await start_server(max_request_bytes=limit)
    url = f"{server.base_url}/predict?k=3"

    async with server.client.post(url, data=gzip.compress(b"\0" * (limit * 4)), headers={"Content-Encoding": "gzip"}) as response:
        assert response.status == 413
        bomb = await response.json()
    async with server.client.post(url, data=b"\0" * (limit + 1)) as response:
        assert response.status == 413
        plain = await response.json()

    assert_json_error(bomb, "payload_too_large")
    assert "decompressed body" in bomb["detail"]
    assert str(limit) in bomb["detail"]
    assert_json_error(plain, "payload_too_large")
    assert "decompressed" not in plain["detail"]


async def test_predict_rejections_counted(start_server: ServerFactory) -> None:
    limit = 256 * 1024
    server = await start_server(max_request_bytes=limit)
    base = f"{server.base_url}/predict"
    image = jpeg_bytes()

    async def chunked_over_limit() -> AsyncIterator[bytes]:
        for _ in range(limit // 8192 + 2):
            yield b"\0" * 8192

    # (query, body, headers, expected status): every case is one rejection.
    cases = [
        ("", image, {}, 400),
        ("?k=0", image, {}, 400),
        ("?k=3", b"", {}, 400),
        ("?k=3", b"\0" * (limit + 1), {}, 413),
        ("?k=3", chunked_over_limit(), {}, 413),
        ("?k=3", gzip.compress(b"\0" * (limit * 4)), {"Content-Encoding": "gzip"}, 413),
        ("?k=3", image, {"Content-Encoding": "br"}, 415),
        ("?k=3", image, {"Content-Encoding": "gzip"}, 400),
    ]
    for query, body, headers, status in cases:
        async with server.client.post(f"{base}{query}", data=body, headers=headers) as response:
            assert response.status == status, query

    exposition = await scrape(server)
    assert metric_value(exposition, "flowerbot_errors_total", {"kind": "http_invalid_request"}) == 3
    assert metric_value(exposition, "flowerbot_errors_total", {"kind": "http_empty"}) == 1
    assert metric_value(exposition, "flowerbot_errors_total", {"kind": "http_payload_too_large"}) == 3
    assert metric_value(exposition, "flowerbot_errors_total", {"kind": "http_unsupported_encoding"}) == 1


async def test_predict_token_auth(start_server: ServerFactory) -> None:
    server = await start_server(api_token=API_TOKEN)
    url = f"{server.base_url}/predict?k=3"
    image = jpeg_bytes()

    async with server.client.post(url, data=image) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_json_error(await response.json(), "unauthorized")

    for header in (f"Bearer {API_TOKEN}x", f"Bearer {API_TOKEN[:-1]}", f"Basic {API_TOKEN}", API_TOKEN):
        async with server.client.post(url, data=image, headers={"Authorization": header}) as response:
            assert response.status == 401, header
            assert_json_error(await response.json(), "unauthorized")

    async with server.client.post(url, data=image, headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
        assert response.status == 200
        assert len((await response.json())["predictions"]) == 3

    async with server.client.get(f"{server.base_url}/healthz") as response:
        assert response.status == 200


async def test_unknown_route_and_method(start_server: ServerFactory) -> None:
    server = await start_server()

    async with server.client.get(f"{server.base_url}/no-such-page") as response:
        assert response.status == 404
        assert_json_error(await response.json(), "not_found")

    async with server.client.get(f"{server.base_url}/predict") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert_json_error(await response.json(), "method_not_allowed")


# -- /metrics, /healthz, /readyz ----------------------------------------------------


async def test_metrics_change_after_prediction(start_server: ServerFactory, photo_bytes: bytes) -> None:
    server = await start_server()
    version = server.service.version
    prediction_labels = {"model_version": version, "source": "http"}

    before = await scrape(server)
    assert metric_value(before, "flowerbot_predictions_total", prediction_labels) == 0
    assert metric_value(before, "flowerbot_prediction_duration_seconds_count", {"source": "http"}) == 0

    async with server.client.post(f"{server.base_url}/predict?k=3", data=photo_bytes) as response:
        assert response.status == 200
    async with server.client.post(f"{server.base_url}/predict?k=3", data=b"not an image") as response:
        assert response.status == 415

    after = await scrape(server)
    assert metric_value(after, "flowerbot_predictions_total", prediction_labels) == 1
    assert metric_value(after, "flowerbot_prediction_duration_seconds_count", {"source": "http"}) == 1
    assert metric_value(after, "flowerbot_prediction_duration_seconds_sum", {"source": "http"}) > 0
    request_labels = {"endpoint": "/predict", "method": "POST"}
    assert metric_value(after, "flowerbot_http_requests_total", {**request_labels, "status": "200"}) == 1
    assert metric_value(after, "flowerbot_http_requests_total", {**request_labels, "status": "415"}) == 1
    assert metric_value(after, "flowerbot_errors_total", {"kind": "decode_not_image"}) == 1
    assert metric_value(after, "flowerbot_http_request_duration_seconds_count", {"endpoint": "/predict"}) == 2
    assert metric_value(after, "flowerbot_model_info", {"model_version": version}) == 1
    # The first scrape was counted when it finished, so the second scrape includes it.
    assert metric_value(after, "flowerbot_http_requests_total", {"endpoint": "/metrics", "status": "200"}) == 1


async def test_metrics_token(start_server: ServerFactory) -> None:
    metrics_token = "test-metrics-token-77aa"
    server = await start_server(api_token=API_TOKEN, metrics_token=metrics_token)
    url = f"{server.base_url}/metrics"

    for headers in ({}, {"Authorization": f"Bearer {API_TOKEN}"}, {"Authorization": f"Bearer {metrics_token}x"}):
        async with server.client.get(url, headers=headers) as response:
            assert response.status == 401, headers
            payload = await response.json()
        assert_json_error(payload, "unauthorized")
        assert "METRICS_TOKEN" in payload["detail"]

    async with server.client.get(url, headers={"Authorization": f"Bearer {metrics_token}"}) as response:
        assert response.status == 200
        body = await response.text()
    assert metric_value(body, "flowerbot_errors_total", {"kind": "http_unauthorized"}) == 3

    async with server.client.get(f"{server.base_url}/healthz") as response:
        assert response.status == 200


async def test_healthz(start_server: ServerFactory) -> None:
    server = await start_server()

    async with server.client.get(f"{server.base_url}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_readyz_ready(start_server: ServerFactory) -> None:
    server = await start_server()

    async with server.client.get(f"{server.base_url}/readyz") as response:
        assert response.status == 200
        payload = await response.json()
    assert payload["checks"] == {"model": "ok", "database": "ok"}
    assert payload["model_version"] == server.service.version


async def test_readyz_without_model(start_server: ServerFactory) -> None:
    server = await start_server()
    # The runtime starts the HTTP server before the model has loaded.
    server.runtime.context.service = None  # type: ignore[assignment]

    async with server.client.get(f"{server.base_url}/readyz") as response:
        assert response.status == 503
        payload = await response.json()
    assert_json_error(payload, "not_ready")
    assert payload["checks"]["model"] == "not loaded"
    assert payload["checks"]["database"] == "ok"

    async with server.client.post(f"{server.base_url}/predict?k=3", data=jpeg_bytes()) as response:
        assert response.status == 503
        assert_json_error(await response.json(), "not_ready")


async def test_readyz_database_down(start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server()
    # create_engine makes the database's directory; without it, SQLite cannot open the file.
    missing_directory = tmp_path / "removed"
    engine = create_engine(f"sqlite+aiosqlite:///{missing_directory / 'flowerbot.db'}")
    missing_directory.rmdir()
    server.runtime.context.repository = Repository(new_session_factory(engine), max_attempts=1)
    threads_before = set(threading.enumerate())
    try:
        async with server.client.get(f"{server.base_url}/readyz") as response:
            assert response.status == 503
            payload = await response.json()
    finally:
        await engine.dispose()
        # After a failed connect, aiosqlite stops its worker thread without waiting for it;
        # let those threads finish while this test's event loop still runs.
        for thread in set(threading.enumerate()) - threads_before:
            if "_connection_worker_thread" in thread.name:
                await asyncio.to_thread(thread.join, 10)

    assert_json_error(payload, "not_ready")
    assert payload["checks"]["model"] == "ok"
    assert payload["checks"]["database"] != "ok"
    assert "database" in payload["detail"]


# -- webhook -------------------------------------------------------------------------


@pytest.fixture
async def emulator() -> AsyncIterator[TelegramEmulator]:
    async with TelegramEmulator() as running:
        yield running


def build_application(emulator: TelegramEmulator) -> Application:
    return (
        ApplicationBuilder()
        .token(emulator.token)
        .base_url(emulator.base_url)
        .base_file_url(emulator.base_file_url)
        .updater(None)
        .build()
    )


async def start_webhook_server(start_server: ServerFactory, emulator: TelegramEmulator, **overrides: Any) -> RunningServer:
    application = build_application(emulator)
    # The route is added when WEBHOOK_URL is set; the port is known only once the server listens.
    server = await start_server(application=application, webhook_url="http://127.0.0.1/placeholder", **overrides)
    port = bound_addresses(server.runner)[0][1]
    server.settings.http_port = port
    server.settings.webhook_url = f"http://127.0.0.1:{port}"
    return server


async def test_webhook_right_secret_reaches_queue(start_server: ServerFactory, emulator: TelegramEmulator) -> None:
    server = await start_webhook_server(start_server, emulator, webhook_secret="right-secret_123")
    application = server.runtime.application
    assert application is not None

    url = await start_webhook(server.runtime)
    assert url == f"{server.base_url}/telegram/webhook"
    assert emulator.webhook is not None
    assert emulator.webhook["url"] == url
    assert emulator.webhook["secret_token"] == "right-secret_123"

    person = make_user(4242, language_code="en")
    sent = emulator.send_text(person, private_chat(person), "hello over the webhook")
    update = await asyncio.wait_for(application.update_queue.get(), timeout=30)

    assert update.message is not None
    assert update.message.text == "hello over the webhook"
    assert update.message.message_id == sent["message_id"]
    assert update.effective_user.id == 4242
    assert emulator.webhook_deliveries[-1] == (update.update_id, 200)

    await stop_webhook(server.runtime)
    assert emulator.webhook is None
    assert emulator.calls_to("deleteWebhook")


async def test_webhook_wrong_secret_rejected(start_server: ServerFactory, emulator: TelegramEmulator) -> None:
    server = await start_webhook_server(start_server, emulator, webhook_secret="right-secret_123")
    application = server.runtime.application
    assert application is not None
    url = f"{server.base_url}{server.settings.webhook_path}"
    person = make_user(4243)
    update = {
        "update_id": 777,
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "chat": private_chat(person),
            "from": person,
            "text": "forged",
        },
    }

    for headers in ({SECRET_HEADER: "wrong-secret"}, {SECRET_HEADER: ""}, {}):
        async with server.client.post(url, json=update, headers=headers) as response:
            assert response.status == 403, headers
            assert_json_error(await response.json(), "forbidden")
    assert application.update_queue.empty()

    right = {SECRET_HEADER: "right-secret_123"}
    async with server.client.post(url, data=b"{not json", headers=right) as response:
        assert response.status == 400
        assert_json_error(await response.json(), "invalid_request")
    async with server.client.post(url, json={"no": "update id"}, headers=right) as response:
        assert response.status == 400
    assert application.update_queue.empty()

    async with server.client.post(url, json=update, headers=right) as response:
        assert response.status == 200
    queued = application.update_queue.get_nowait()
    assert queued.update_id == 777
    assert queued.message.text == "forged"

    exposition = await scrape(server)
    assert metric_value(exposition, "flowerbot_errors_total", {"kind": "webhook_forbidden"}) == 3


async def test_webhook_secret_derived_from_token(start_server: ServerFactory, emulator: TelegramEmulator) -> None:
    server = await start_webhook_server(start_server, emulator)
    derived = webhook_secret(server.settings)
    assert derived not in DEFAULT_TOKEN
    assert len(derived) == 64

    await start_webhook(server.runtime)
    assert emulator.webhook is not None
    assert emulator.webhook["secret_token"] == derived
    await stop_webhook(server.runtime)


async def test_no_webhook_route_without_url(start_server: ServerFactory) -> None:
    server = await start_server()

    async with server.client.post(f"{server.base_url}{server.settings.webhook_path}", json={"update_id": 1}) as response:
        assert response.status == 404


# -- shutdown ------------------------------------------------------------------------


class GatedBackend:
    """A real backend whose `logits` waits until the test opens the gate, to hold requests in flight."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        return self.inner.logits(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_shutdown_answers_requests_in_flight(start_server: ServerFactory, bundle_dir: Path) -> None:
    from classifier.backends import load_backend

    bundle = Bundle.load(bundle_dir)
    backend = GatedBackend(load_backend(bundle, "torch", "cpu"))
    service = ClassifierService(bundle, backend, max_batch=4, max_wait_s=0.001)
    server = await start_server(service=service)
    images = [jpeg_bytes(seed=seed) for seed in range(6)]

    async def predict(image: bytes) -> tuple[int, dict[str, Any]]:
        async with server.client.post(f"{server.base_url}/predict?k=2", data=image) as response:
            return response.status, await response.json()

    burst = [asyncio.create_task(predict(image)) for image in images]
    # Wait until every request is inside a handler. The gate blocks inference of the first
    # batch, and the other requests queue behind it.
    in_progress = {"endpoint": "/predict"}
    for _ in range(3000):
        if server.metrics.sample("flowerbot_http_requests_in_progress", in_progress) == len(images):
            break
        await asyncio.sleep(0.01)
    assert server.metrics.sample("flowerbot_http_requests_in_progress", in_progress) == len(images)
    assert await asyncio.to_thread(backend.entered.wait, 30)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0)  # let the server close its listening socket
    backend.gate.set()
    results = await asyncio.gather(*burst)
    await stopping

    for status, payload in results:
        assert status == 200, payload
        assert len(payload["predictions"]) == 2
        assert payload["model_version"] == bundle.version
    digests = {payload["image_sha256"] for _, payload in results}
    assert digests == {hashlib.sha256(image).hexdigest() for image in images}

    with pytest.raises(aiohttp.ClientConnectionError):
        async with server.client.post(f"{server.base_url}/predict?k=2", data=images[0]):
            pass
