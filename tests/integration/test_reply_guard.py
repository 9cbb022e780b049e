"""A query whose reply cannot arrive (the path answers TCP but passes nothing) fails within
seconds instead of blocking its process forever; a long statement the server runs is kept."""

import time

import pytest
import sqlalchemy as sa

from db import reply_guard
from db.engine import make_engine
from tests.fixtures.faults import tcp_proxy
from tests.services import POSTGRES_HOST, POSTGRES_PORT, require_service

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def quick_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    monkeypatch.setattr(reply_guard, "SUSPECT_AFTER_S", 1.0)
    monkeypatch.setattr(reply_guard, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(reply_guard, "WATCH_PERIOD_S", 0.2)


def test_a_query_on_a_blackholed_connection_fails_within_seconds() -> None:
    with tcp_proxy(POSTGRES_HOST, POSTGRES_PORT) as proxy:
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/postgres")
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError):
                connection.execute(sa.text("SELECT 1"))
            waited = time.monotonic() - started
        engine.dispose()
    assert waited < 6  # suspect after 1 s, a probe that cannot connect within 1 s, then cut


def test_a_long_statement_the_server_is_running_is_left_alone() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres")
    with engine.connect() as connection:
        slept = connection.execute(sa.text("SELECT pg_sleep(2.5), 42")).one()
    engine.dispose()
    assert slept[1] == 42
