"""Shared pytest configuration. Fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.database",
    "tests.fixtures.bot",
    "tests.fixtures.honesty",
]
