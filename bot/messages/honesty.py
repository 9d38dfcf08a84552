"""Messages for how sure an answer is, "not a flower", albums, reference photos and species cards."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # How sure the bot is, by the calibrated probability of its first species.
    "honesty.sure": {
        "en": "I am sure this is {name}.",
        "zh": "我确定这是{name}。",
    },
    "honesty.likely": {
        "en": "This is likely {name}, but check the other candidates too.",
        "zh": "这很可能是{name}，但也请看看其他候选。",
    },
    "honesty.unsure": {
        "en": "I am not sure. It may be one of these, or a flower I do not know.",
        "zh": "我不确定。它可能是其中之一，也可能是我不认识的花。",
    },
    # Out-of-distribution photos: the best guesses follow this line.
    "honesty.not_a_flower": {
        "en": "This does not look like any of the flowers I know. My closest guesses:",
        "zh": "这看起来不像我认识的任何一种花。我最接近的猜测：",
    },
    # Albums.
    "honesty.album": {
        "en": "From {count} photos together:",
        "zh": "综合 {count} 张照片：",
    },
    # Photos of an album left out: `bot.honesty.skipped_photos_line` picks `.one` for a count of 1.
    # Chinese has no plural forms, so both keys share one sentence there.
    "honesty.album_skipped.one": {
        "en": "{count} of the photos could not be read and was left out.",
        "zh": "有 {count} 张照片无法读取，已略过。",
    },
    "honesty.album_skipped.other": {
        "en": "{count} of the photos could not be read and were left out.",
        "zh": "有 {count} 张照片无法读取，已略过。",
    },
    # Buttons under an answer.
    "reference.button.photos": {"en": "📷 Reference photos", "zh": "📷 参考照片"},
    "reference.button.about": {"en": "📖 About {name}", "zh": "📖 关于{name}"},
    # Reference photos.
    "reference.caption": {"en": "{rank}. {name}", "zh": "{rank}. {name}"},
    "reference.notice.none": {
        "en": "This model has no reference photos.",
        "zh": "这个模型没有参考照片。",
    },
    "reference.notice.already_sent": {"en": "Already sent above.", "zh": "已经发送过了，请往上看。"},
    "reference.notice.invalid_button": {
        "en": "This button is not valid. Send the photo again to get new buttons.",
        "zh": "这个按钮无效。请重新发送照片以获取新的按钮。",
    },
    "reference.notice.prediction_gone": {
        "en": "This answer is no longer stored.",
        "zh": "这个答案已不再保存。",
    },
    "reference.notice.failed": {
        "en": "The photos could not be sent. Try again later.",
        "zh": "照片发送失败，请稍后再试。",
    },
    # Species cards; the card is sent with HTML formatting.
    "species.card.title": {"en": "📖 <b>{name}</b>", "zh": "📖 <b>{name}</b>"},
    "species.card.name_en": {"en": "English: {name}", "zh": "英文名：{name}"},
    "species.card.name_zh": {"en": "Chinese: {name}", "zh": "中文名：{name}"},
    "species.card.wikipedia": {
        "en": 'Wikipedia: <a href="{url}">{title}</a>',
        "zh": '维基百科：<a href="{url}">{title}</a>',
    },
    "species.card.wikipedia_english": {
        "en": 'Wikipedia: <a href="{url}">{title}</a>',
        "zh": '维基百科（英文）：<a href="{url}">{title}</a>',
    },
    "species.card.wikipedia_search": {
        "en": 'Wikipedia: <a href="{url}">search for “{title}”</a>',
        "zh": '维基百科：<a href="{url}">搜索“{title}”</a>',
    },
}
