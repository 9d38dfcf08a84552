"""The HTTP server of the bot process: prediction API, health checks, metrics and the webhook.

Routes:

- `POST /predict?k=N`: classify one image sent as the raw request body or as the
  multipart field `file`. `k` (1 to the number of classes) is required. Returns the
  top-k classes with their names in every language, probabilities (0 to 1, highest
  first) and the model version. Requires `Authorization: Bearer <API_TOKEN>` when
  API_TOKEN is set.
- `GET /healthz`: liveness; 200 while the event loop serves requests.
- `GET /readyz`: readiness; 200 when the model is loaded and `SELECT 1` succeeds on
  the database, else 503.
- `GET /metrics`: Prometheus text format. Requires `Authorization: Bearer <METRICS_TOKEN>`
  when METRICS_TOKEN is set.
- `POST {WEBHOOK_PATH}`: Telegram updates, only when WEBHOOK_URL is set (`bot.webhook`).

Every error response is JSON `{"error": <code>, "detail": <sentence>}`. Status codes
of `/predict`, each 4xx counted once in `flowerbot_errors_total` with kind `http_<error>`,
except the image decoding errors, which count as `decode_<error>`:

| status | error | when |
| --- | --- | --- |
| 400 | `invalid_request` | `k` missing or out of range, no `file` field, malformed multipart, a gzip or deflate body that fails to decompress |
| 400 | `empty` | the image has 0 bytes |
| 401 | `unauthorized` | API_TOKEN is set and the bearer token is missing or wrong |
| 413 | `payload_too_large` | the body, as sent or decompressed, is larger than MAX_REQUEST_BYTES |
| 415 | `not_image`, `unsupported` | the bytes are not an image format the classifier decodes |
| 415 | `unsupported_encoding` | a Content-Encoding other than gzip, deflate or identity |
| 422 | `truncated`, `too_large` | a damaged image, or one over the pixel limit (MAX_IMAGE_PIXELS) or the aspect-ratio limit (20:1) |
| 503 | `not_ready` | the classifier is closed (the bot is shutting down) |
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from bot import metrics as metrics_module
from bot.metrics import Metrics
from bot.request_body import DecompressedTooLarge, PayloadTooLarge, RequestBodyError, read_image_body
from classifier.decode import ImageDecodeError

if TYPE_CHECKING:
    from telegram.ext import Application

    from bot.context import BotContext

logger = logging.getLogger(__name__)

# Languages of the class names in a /predict response: the languages the bot speaks.
NAME_LANGUAGES = ("en", "zh")

# HTTP status for each `ImageDecodeError.reason`.
DECODE_ERROR_STATUS = {
    "empty": 400,
    "not_image": 415,
    "unsupported": 415,
    "truncated": 422,
    "too_large": 422,
}

READINESS_TIMEOUT_S = 5.0
# Seconds that stopping the server waits for requests in flight, such as a prediction
# queued behind a batch, before it cancels them.
SHUTDOWN_TIMEOUT_S = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServingRuntime(Protocol):
    """The part of the running bot that the HTTP server uses; `bot.runtime.BotRuntime` provides both attributes."""

    @property
    def context(self) -> BotContext: ...

    @property
    def application(self) -> Application: ...


RUNTIME_KEY = web.AppKey("runtime", object)
METRICS_KEY = web.AppKey("metrics", Metrics)
_MAX_BYTES_KEY = web.AppKey("max_request_bytes", int)
METRICS_EXTRAS_KEY = "metrics"


def json_error(status: int, error: str, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """Return the JSON error response `{"error": error, "detail": detail}` with `status`."""
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def _runtime(request: web.Request) -> Any:
    return request.app[RUNTIME_KEY]


def _metrics(request: web.Request) -> Metrics:
    return request.app[METRICS_KEY]


# -- middlewares -------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    """Return the route pattern that matched, so metric labels never contain raw paths."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or request.match_info.http_exception is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route, method and status, and observe its duration."""
    metrics = _metrics(request)
    endpoint = _route_name(request)
    started = time.perf_counter()
    status = 500
    in_progress = metrics.http_requests_in_progress.labels(endpoint=endpoint)
    in_progress.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        in_progress.dec()
        metrics.record_http_request(endpoint, request.method, status, time.perf_counter() - started)


@web.middleware
async def json_errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors (404, 405, 413, ...) and unexpected exceptions into JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = "payload_too_large" if error.status == 413 else error.reason.lower().replace(" ", "_")
        detail = error.text or error.reason
        if error.status == 413:
            detail = f"the request body is larger than the limit of {request.app[_MAX_BYTES_KEY]} bytes (MAX_REQUEST_BYTES)"
        headers = {name: value for name, value in error.headers.items() if name.lower() == "allow"}
        return json_error(error.status, code, detail, headers=headers or None)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        _metrics(request).record_error("http_internal")
        return json_error(500, "internal_error", "the server failed to handle the request; see the server log")


# -- /predict ----------------------------------------------------------------


def _check_bearer_token(request: web.Request, expected: str, setting: str = "API_TOKEN") -> web.Response | None:
    """Return a 401 response unless the request carries `Authorization: Bearer <expected>`.

    `setting` names the environment variable that contains the token, for the error detail.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest takes time independent of where the strings differ.
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode()):
        return None
    return json_error(
        401,
        "unauthorized",
        f"missing or invalid bearer token; send the header 'Authorization: Bearer <{setting}>'",
        headers={"WWW-Authenticate": 'Bearer realm="flowerbot"'},
    )


def _parse_k(request: web.Request, num_classes: int) -> int | web.Response:
    raw = request.query.get("k")
    if raw is None or not raw.strip():
        return json_error(400, "invalid_request", f"missing query parameter k; add ?k=N with N from 1 to {num_classes}")
    try:
        k = int(raw)
    except ValueError:
        return json_error(400, "invalid_request", f"k must be an integer from 1 to {num_classes}, got {raw!r}")
    if not 1 <= k <= num_classes:
        return json_error(400, "invalid_request", f"k must be from 1 to {num_classes} (the model's classes), got {k}")
    return k


def _prediction_payload(prediction: Any, k: int) -> dict[str, Any]:
    candidates = []
    for rank, candidate in enumerate(prediction.top, start=1):
        names = {lang: prediction.display_name(candidate, lang) for lang in NAME_LANGUAGES}
        candidates.append(
            {
                "rank": rank,
                "index": candidate.index,
                "class_id": candidate.class_id,
                "name": names["en"],
                "names": names,
                "probability": candidate.probability,
            }
        )
    return {
        "model_version": prediction.model_version,
        "k": k,
        "predictions": candidates,
        "ood_score": prediction.ood_score,
        "is_ood": prediction.is_ood,
        "image_sha256": prediction.image_sha256,
        "latency_ms": round(prediction.latency_ms, 3),
    }


async def handle_predict(request: web.Request) -> web.Response:
    """Classify the image in the request body and return the top-k classes as JSON."""
    context = _runtime(request).context
    settings = context.settings
    service = context.service
    metrics = _metrics(request)

    if settings.api_token is not None:
        rejection = _check_bearer_token(request, settings.api_token.get_secret_value())
        if rejection is not None:
            metrics.record_error("http_unauthorized")
            return rejection

    if service is None:
        return json_error(503, "not_ready", "the model is not loaded yet; retry in a few seconds")
    k = _parse_k(request, len(service.labels))
    if isinstance(k, web.Response):
        metrics.record_error("http_invalid_request")
        return k

    limit = request.app[_MAX_BYTES_KEY]
    try:
        data = await read_image_body(request, limit)
    except DecompressedTooLarge:
        metrics.record_error("http_payload_too_large")
        return json_error(
            413, "payload_too_large", f"the decompressed body is larger than the limit of {limit} bytes (MAX_REQUEST_BYTES)"
        )
    except PayloadTooLarge:
        metrics.record_error("http_payload_too_large")
        return json_error(413, "payload_too_large", f"the request body is larger than the limit of {limit} bytes (MAX_REQUEST_BYTES)")
    except RequestBodyError as error:
        metrics.record_error(f"http_{error.code}")
        return json_error(error.status, error.code, error.detail)
    if not data:
        metrics.record_error("http_empty")
        return json_error(400, "empty", "the request body is empty; send the image as the body or as the multipart field 'file'")

    started = time.perf_counter()
    try:
        prediction = await service.classify(data, k)
    except ImageDecodeError as error:
        metrics.record_error(f"decode_{error.reason}")
        status = DECODE_ERROR_STATUS.get(error.reason, 422)
        logger.info("rejected a /predict image (%d bytes): %s: %s", len(data), error.reason, error)
        return json_error(status, error.reason, str(error))
    except RuntimeError as error:
        # ClassifierService raises RuntimeError once it is closed, during shutdown.
        logger.warning("/predict while the classifier is unavailable: %s", error)
        return json_error(503, "not_ready", f"the classifier is not available: {error}")
    seconds = time.perf_counter() - started

    metrics.record_prediction(prediction.model_version, seconds, source="http")
    return web.json_response(_prediction_payload(prediction, k))


# -- health, readiness, metrics ----------------------------------------------


async def handle_healthz(request: web.Request) -> web.Response:
    """Report that the process is alive and its event loop handles requests."""
    return web.json_response({"status": "ok"})


async def _check_database(context: BotContext) -> str | None:
    """Return None when `SELECT 1` succeeds on the database, else why it failed."""
    try:
        await asyncio.wait_for(context.repository.ping(), timeout=READINESS_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"no answer within {READINESS_TIMEOUT_S:g} s"
    except Exception as error:  # Any driver error means "not ready"; the reason goes into the response.
        return f"{type(error).__name__}: {error}"
    return None


async def handle_readyz(request: web.Request) -> web.Response:
    """Report whether the model is loaded and the database runs `SELECT 1`; 503 when either fails."""
    context = _runtime(request).context
    checks: dict[str, str] = {}

    service = context.service
    if service is None or getattr(service, "closed", False):
        checks["model"] = "not loaded"
    else:
        checks["model"] = "ok"

    database_error = await _check_database(context)
    checks["database"] = "ok" if database_error is None else database_error

    failed = {name: state for name, state in checks.items() if state != "ok"}
    if failed:
        logger.warning("readiness check failed: %s", failed)
        detail = "; ".join(f"{name}: {state}" for name, state in failed.items())
        return web.json_response({"error": "not_ready", "detail": detail, "checks": checks}, status=503)
    return web.json_response({"status": "ready", "checks": checks, "model_version": service.version})


async def handle_metrics(request: web.Request) -> web.Response:
    """Return every metric in the Prometheus text format."""
    metrics = _metrics(request)
    token = _runtime(request).context.settings.metrics_token
    if token is not None:
        rejection = _check_bearer_token(request, token.get_secret_value(), "METRICS_TOKEN")
        if rejection is not None:
            logger.info("rejected a /metrics request without the METRICS_TOKEN bearer token from %s", request.remote)
            metrics.record_error("http_unauthorized")
            return rejection
    service = _runtime(request).context.service
    if service is not None:
        metrics.set_model_version(service.version)
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics_module.CONTENT_TYPE})


# -- application and server --------------------------------------------------


def build_http_app(runtime: ServingRuntime, *, metrics: Metrics | None = None) -> web.Application:
    """Build the aiohttp application for `runtime`, with the webhook route when WEBHOOK_URL is set.

    Metrics go to `metrics` when given, else to `runtime.context.extras["metrics"]`, else
    to the process's active `bot.metrics` instance, which is then stored in the extras so
    the handlers and this server share it.
    """
    settings = runtime.context.settings
    if metrics is None:
        metrics = runtime.context.extras.get(METRICS_EXTRAS_KEY) or metrics_module.get_metrics()
    runtime.context.extras.setdefault(METRICS_EXTRAS_KEY, metrics)

    # client_max_size bounds request.read(); the default of 1 MiB would reject most phone photos.
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        middlewares=[metrics_middleware, json_errors_middleware],
    )
    app[RUNTIME_KEY] = runtime
    app[METRICS_KEY] = metrics
    app[_MAX_BYTES_KEY] = settings.max_request_bytes

    app.router.add_post("/predict", handle_predict)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)

    if settings.webhook_url:
        from bot.webhook import add_webhook_route

        add_webhook_route(app, runtime)
    return app


async def start_http_server(runtime: ServingRuntime, *, metrics: Metrics | None = None) -> web.AppRunner:
    """Serve `build_http_app(runtime)` on HTTP_HOST:HTTP_PORT and return the runner.

    Stop it with `stop_http_server(runner)`, which waits up to SHUTDOWN_TIMEOUT_S for
    requests in flight. With HTTP_PORT=0 the OS picks a free port, and `bound_addresses(runner)`
    returns it.
    """
    settings = runtime.context.settings
    app = build_http_app(runtime, metrics=metrics)
    # Request bodies are decompressed by `bot.request_body`, within MAX_REQUEST_BYTES.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        logger.error("could not listen on %s:%d; set HTTP_HOST/HTTP_PORT to a free address", settings.http_host, settings.http_port)
        raise
    logger.info("HTTP server listening on %s", ", ".join(f"{host}:{port}" for host, port in bound_addresses(runner)))
    return runner


def bound_addresses(runner: web.AppRunner) -> list[tuple[str, int]]:
    """Return the (host, port) pairs the runner's sites listen on."""
    return [(address[0], address[1]) for address in runner.addresses]


async def stop_http_server(runner: web.AppRunner) -> None:
    """Stop listening, wait for requests in flight (up to SHUTDOWN_TIMEOUT_S), and close the server."""
    logger.info("stopping the HTTP server")
    await runner.cleanup()
    logger.info("HTTP server stopped")
