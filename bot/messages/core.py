"""Messages of the core bot: /start, /help, answers to photos, /top5 and the error reply."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # /start and /help.
    "start.welcome": {
        "en": (
            "Hello, {name}! I name flowers from photos. Send me a photo of a flower and I will reply "
            "with the three species it most likely is, each with my confidence."
        ),
        "zh": "{name}，你好！我可以根据照片识别花卉。发给我一张花的照片，我会回复最可能的三个品种，以及每个品种的置信度。",
    },
    "help.text": {
        "en": (
            "Send a photo of a flower, or an image file such as JPEG, PNG or WebP, and I will reply with "
            "the three most likely species and my confidence in each.\n\nCommands:\n{commands}"
        ),
        "zh": "发给我一张花的照片，或 JPEG、PNG、WebP 等格式的图片文件，我会回复最可能的三个品种及每个品种的置信度。\n\n命令：\n{commands}",
    },
    "help.command_line": {"en": "/{command} – {description}", "zh": "/{command} – {description}"},
    # Command menu descriptions (setMyCommands allows 1-256 characters).
    "command.start": {"en": "Start the bot and see what to send", "zh": "开始使用，看看该发送什么"},
    "command.help": {"en": "How to use the bot", "zh": "使用说明"},
    "command.top5": {"en": "Five most likely species for your last photo", "zh": "上一张照片最可能的五个品种"},
    # One line of an answer, highest probability first.
    "answer.line": {"en": "{rank}. {name} — {percent}", "zh": "{rank}. {name} — {percent}"},
    # Photos and files that cannot be classified.
    "photo.too_big": {
        "en": "That file is {size_mb} MB, and bots can only download files up to 20 MB. Send a smaller photo.",
        "zh": "这个文件有 {size_mb} MB，机器人只能下载不超过 20 MB 的文件。请发送小一些的照片。",
    },
    "photo.not_image": {
        "en": "I can only read images. Send a photo of a flower, or an image file such as JPEG, PNG or WebP.",
        "zh": "我只能识别图片。请发送一张花的照片，或 JPEG、PNG、WebP 等格式的图片文件。",
    },
    "photo.empty": {
        "en": "That file is empty. Send a photo of a flower.",
        "zh": "这个文件是空的。请发送一张花的照片。",
    },
    "photo.truncated": {
        "en": "That image is damaged or incomplete, so I cannot read it. Send the photo again.",
        "zh": "这张图片已损坏或不完整，我无法读取。请重新发送照片。",
    },
    "photo.too_large": {
        "en": "That image is too large, or too long and narrow, for me to read. Send a normal photo of the flower instead.",
        "zh": "这张图片太大，或者太细长，我无法读取。请改发一张普通的花朵照片。",
    },
    "photo.unsupported": {
        "en": "I cannot read this kind of image. Send it as a JPEG, PNG or WebP file, or as a photo.",
        "zh": "我无法读取这种图片。请以 JPEG、PNG、WebP 文件或照片的形式发送。",
    },
    "photo.download_failed": {
        "en": "I could not download that file from Telegram. Please send it again.",
        "zh": "无法从 Telegram 下载这个文件。请重新发送。",
    },
    # /top5.
    "top5.no_photo": {
        "en": "Send me a photo of a flower first. Then /top5 shows the five most likely species for it.",
        "zh": "请先发给我一张花的照片，然后 /top5 会列出它最可能的五个品种。",
    },
    "top5.image_gone": {
        "en": "I no longer have that photo. Send it again and I will classify it.",
        "zh": "我已不再保存那张照片。请重新发送，我会再次识别。",
    },
    # The global error handler.
    "error.generic": {
        "en": "Sorry, something went wrong on my side, so please try again.",
        "zh": "抱歉，我这边出了点问题，请再试一次。",
    },
}
