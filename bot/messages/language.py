"""Messages of /lang, the choice between English and Simplified Chinese."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "command.lang": {"en": "Choose the language: English or Chinese", "zh": "选择语言：英文或中文"},
    "lang.choose": {"en": "Choose your language:", "zh": "请选择语言："},
    # Each confirmation is sent in the language just chosen.
    "lang.set": {"en": "From now on I will write to you in English.", "zh": "好的，今后我会用中文和你交流。"},
    "lang.reset": {
        "en": "I will follow the language of your Telegram app again, now English.",
        "zh": "我会重新跟随你的 Telegram 应用语言，目前是中文。",
    },
    "lang.unknown": {
        "en": "I do not know the language {value}. Use /lang en for English, /lang zh for Chinese, or /lang auto to follow your Telegram app.",
        "zh": "不支持语言 {value}。使用 /lang en 切换到英文，/lang zh 切换到中文，或 /lang auto 跟随 Telegram 应用的语言。",
    },
    # Button labels name each language in itself, so a person finds theirs whatever the current language.
    "lang.button.en": {"en": "English", "zh": "English"},
    "lang.button.zh": {"en": "中文", "zh": "中文"},
}
