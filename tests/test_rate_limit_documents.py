"""Files that are not images count against the photo rate limit, because each one is downloaded first."""

from __future__ import annotations

import io

from PIL import Image

from bot.i18n import text
from tests.emulator import make_user, message_text
from tests.fixtures.bot import BotHarness

ALICE = make_user(6101, "Alice", language_code="en")
# The start of a PDF: enough for the content check to reject it as not an image.
PDF_BYTES = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_pdf_counts_against_photo_limit(bot_harness: BotHarness) -> None:
    await bot_harness.start(rate_limit_per_minute=2)
    emulator = bot_harness.emulator
    limit_texts = {text("rate_limit.images", "en", seconds=seconds) for seconds in range(1, 61)}

    for number in range(2):
        pdf = emulator.send_document(ALICE, None, PDF_BYTES, f"menu-{number}.pdf", "application/pdf")
        reply = await emulator.wait_for_reply(pdf)
        assert message_text(reply) not in limit_texts
    # Both PDFs were downloaded to find out that they are not images.
    assert len(emulator.calls_to("getFile")) == 2

    photo = emulator.send_photo(ALICE, None, _jpeg())
    reply = await emulator.wait_for_reply(photo)

    assert message_text(reply) in limit_texts
    # The photo over the limit was not downloaded.
    assert len(emulator.calls_to("getFile")) == 2
