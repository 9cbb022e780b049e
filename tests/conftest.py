"""Fixtures shared by every test layer. Adapter fixtures live in tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.storage",
]
