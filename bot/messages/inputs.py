"""Messages for inputs that are not photos, and for people over the rate limit."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # Sent once when a person sends photos or /top5 faster than RATE_LIMIT_PER_MINUTE allows.
    "rate_limit.images": {
        "en": "You are sending photos faster than I can look at them. Please send the next one in {seconds} s.",
        "zh": "你发送照片的速度太快了，我来不及识别。请在 {seconds} 秒后再发送。",
    },
    # Sent in private chats only. In groups these inputs are ignored.
    "input.sticker": {
        "en": "Stickers are drawings, so I cannot name their flowers. Send a photo of a real flower.",
        "zh": "贴纸是画出来的，我无法识别上面的花。请发送一张真实花朵的照片。",
    },
    "input.video": {
        "en": "I cannot watch videos or GIFs. Send a photo of the flower instead, such as a screenshot.",
        "zh": "我无法识别视频或 GIF。请改为发送这朵花的照片，例如一张截图。",
    },
    "input.voice": {
        "en": "I cannot listen to voice or audio messages. Send a photo of a flower and I will name it.",
        "zh": "我无法收听语音或音频消息。请发送一张花的照片，我会告诉你它是什么花。",
    },
    "input.location": {
        "en": "I do not use locations. Send a photo of a flower and I will name it.",
        "zh": "我不使用位置信息。请发送一张花的照片，我会告诉你它是什么花。",
    },
    "input.text": {
        "en": "Send me a photo of a flower and I will name it. /help lists what else I can do.",
        "zh": "请发给我一张花的照片，我会告诉你它是什么花。/help 列出了我的其他功能。",
    },
    "input.unknown_command": {
        "en": "I do not know that command. /help lists the ones I have.",
        "zh": "我不认识这个命令。/help 列出了所有可用的命令。",
    },
    "input.other": {
        "en": "I can only name flowers in photos. Send a photo of a flower.",
        "zh": "我只能识别照片中的花。请发送一张花的照片。",
    },
}
