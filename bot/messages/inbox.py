"""Messages of the durable inbox: the notice for a photo dropped after too many restarts."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # Sent once per photo or album that the replay at start drops after INBOX_MAX_ATTEMPTS.
    "inbox.dropped": {
        "en": "Sorry, I could not process a photo you sent earlier. Please send it again.",
        "zh": "抱歉，我没能处理你之前发送的照片。请重新发送。",
    },
}
