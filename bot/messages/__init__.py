"""Message catalogs, one module per feature; `bot.i18n` merges them."""
