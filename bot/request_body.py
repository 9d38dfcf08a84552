"""Reading the image out of a `/predict` request body, within a byte limit.

The server runs with aiohttp's automatic decompression off (`auto_decompress=False`),
so this module decodes `Content-Encoding` itself. That way a body that fails to
decompress becomes a 400 response, and the limit applies to the decompressed bytes too,
so a small gzip body cannot expand into gigabytes.
"""

from __future__ import annotations

import logging
import zlib

from aiohttp import BodyPartReader, web

logger = logging.getLogger(__name__)

MULTIPART_FIELD = "file"
_READ_CHUNK_BYTES = 64 * 1024

# zlib `wbits` for each supported Content-Encoding: 16 + MAX_WBITS reads a gzip
# header, MAX_WBITS a zlib header. HTTP "deflate" means the zlib format (RFC 9110),
# but some clients send raw deflate, which is tried second.
_ZLIB_WBITS = {
    "gzip": (16 + zlib.MAX_WBITS,),
    "x-gzip": (16 + zlib.MAX_WBITS,),
    "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS),
}


class PayloadTooLarge(Exception):
    """The request body grew past MAX_REQUEST_BYTES while it was read or decompressed."""


class DecompressedTooLarge(PayloadTooLarge):
    """A compressed request body within MAX_REQUEST_BYTES that decompresses to more than it."""


class RequestBodyError(Exception):
    """A request body that cannot be used. Its `status`, `code` and `detail` form the JSON error."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


async def read_image_body(request: web.Request, limit: int) -> bytes:
    """Return the image bytes of `request`: the raw body, or the multipart field `file`.

    Raises `PayloadTooLarge` when the body as sent exceeds `limit` bytes, its subclass
    `DecompressedTooLarge` when the decompressed body does, and `RequestBodyError` for a malformed multipart body, an unknown
    Content-Encoding or a body that fails to decompress or to arrive whole.
    """
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge
    encoding = _content_encoding(request)
    try:
        if request.content_type.startswith("multipart/"):
            if encoding != "identity":
                raise RequestBodyError(
                    415,
                    "unsupported_encoding",
                    f"a multipart body with Content-Encoding {encoding!r} is not supported; send it uncompressed",
                )
            return await _read_multipart_file(request, limit)
        # Application(client_max_size=limit) makes read() raise 413 for a longer chunked body.
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge from None
    except web.RequestPayloadError as error:
        # The chunked encoding broke off or the client sent a malformed body.
        logger.info("rejected an unreadable request body: %s", error)
        raise RequestBodyError(400, "invalid_request", f"the request body could not be read: {_one_line(error)}") from error
    if encoding == "identity":
        return body
    return _decompress(body, encoding, limit)


def _content_encoding(request: web.Request) -> str:
    """Return the request's single Content-Encoding in lower case, "identity" when absent."""
    codings = [coding.strip().lower() for coding in request.headers.get("Content-Encoding", "").split(",") if coding.strip()]
    if not codings:
        return "identity"
    if len(codings) > 1:
        raise RequestBodyError(
            415, "unsupported_encoding", f"more than one Content-Encoding ({', '.join(codings)}) is not supported; use gzip alone"
        )
    coding = codings[0]
    if coding != "identity" and coding not in _ZLIB_WBITS:
        raise RequestBodyError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {coding!r} is not supported; send the body uncompressed, or with gzip or deflate",
        )
    return coding


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress `body`, raising `DecompressedTooLarge` past `limit` output bytes."""
    last_error: zlib.error | None = None
    for wbits in _ZLIB_WBITS[encoding]:
        decompressor = zlib.decompressobj(wbits)
        try:
            # max_length stops a decompression bomb after limit + 1 bytes of output.
            data = decompressor.decompress(body, limit + 1)
            if len(data) > limit or decompressor.unconsumed_tail:
                raise DecompressedTooLarge
            data += decompressor.flush()
            if len(data) > limit:
                raise DecompressedTooLarge
        except zlib.error as error:
            last_error = error
            continue
        if not decompressor.eof:
            logger.info("rejected a %s body that ends early (%d bytes)", encoding, len(body))
            raise RequestBodyError(400, "invalid_request", f"the {encoding} body ends before its compressed stream does; send the whole body")
        return data
    logger.info("rejected a request body that is not valid %s: %s", encoding, last_error)
    raise RequestBodyError(
        400, "invalid_request", f"the body is not valid {encoding} data ({last_error}); fix the Content-Encoding header or send it uncompressed"
    )


async def _read_limited(part: BodyPartReader, limit: int, already_read: int) -> bytes:
    chunks: list[bytes] = []
    total = already_read
    while chunk := await part.read_chunk(_READ_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_multipart_file(request: web.Request, limit: int) -> bytes:
    """Return the bytes of the multipart field `file`, reading at most `limit` bytes in all parts."""
    try:
        reader = await request.multipart()
        read = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise RequestBodyError(400, "invalid_request", "nested multipart bodies are not supported; send one 'file' field")
            if part.name == MULTIPART_FIELD:
                return await _read_limited(part, limit, read)
            # Other fields count against the limit too, then are dropped.
            read += len(await _read_limited(part, limit, read))
    except (ValueError, AssertionError, RuntimeError) as error:
        # aiohttp raises these for a missing boundary or a malformed part header.
        logger.info("rejected a malformed multipart body: %s", error)
        raise RequestBodyError(400, "invalid_request", f"malformed multipart body: {error}") from error
    raise RequestBodyError(400, "invalid_request", f"the multipart body has no field named {MULTIPART_FIELD!r}; send the image in it")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
