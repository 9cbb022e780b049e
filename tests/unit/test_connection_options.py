"""Database, broker and storage connections carry keepalives and timeouts, so a connection
whose far end vanished without closing it fails within about 30 s instead of hanging."""

import socket
from typing import Any

import pytest
from kombu import Connection

from db import engine as db_engine
from db.engine import make_engine, postgres_connect_args
from db.reply_guard import GuardedConnection
from schemas.settings import Settings
from services.adapters.storage import s3
from tests.fixtures.storage import make_s3_storage
from tests.services import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    REDIS_HOST,
    REDIS_PORT,
    require_service,
)
from workers import celery_app
from workers.celery_app import broker_options

# The budget the constants are chosen for: a dead peer noticed within this many seconds.
DEAD_PEER_BUDGET_S = 30


class _Captured(Exception):
    """Raised instead of connecting: the test only wants the connection's parameters."""


def connect_params(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keyword arguments the engine would hand the driver to connect."""
    seen: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Captured

    monkeypatch.setattr(GuardedConnection, "connect", capture)
    with pytest.raises(_Captured):
        make_engine(url).connect()
    return seen


def test_postgres_connections_carry_keepalives_and_timeouts(monkeypatch):
    params = connect_params("postgresql+psycopg://postgres@127.0.0.1:5432/assay", monkeypatch)
    assert params["keepalives"] == 1
    assert params["keepalives_idle"] == db_engine.KEEPALIVES_IDLE_S
    assert params["keepalives_interval"] == db_engine.KEEPALIVES_INTERVAL_S
    assert params["keepalives_count"] == db_engine.KEEPALIVES_COUNT
    assert params["tcp_user_timeout"] == db_engine.TCP_USER_TIMEOUT_MS
    assert params["connect_timeout"] == db_engine.CONNECT_TIMEOUT_S
    silent_for = (
        db_engine.KEEPALIVES_IDLE_S + db_engine.KEEPALIVES_INTERVAL_S * db_engine.KEEPALIVES_COUNT
    )
    assert silent_for <= DEAD_PEER_BUDGET_S
    assert db_engine.TCP_USER_TIMEOUT_MS <= DEAD_PEER_BUDGET_S * 1000


def test_sqlite_gets_no_network_options(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as connection:  # sqlite3 would refuse an unknown keyword
        assert connection.exec_driver_sql("select 1").scalar() == 1


@pytest.mark.postgres
def test_libpq_applies_them_to_the_socket():
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    engine = make_engine(f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres")
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert driver is not None
            parameters = driver.info.get_parameters()
            assert parameters["keepalives_idle"] == str(db_engine.KEEPALIVES_IDLE_S)
            assert parameters["tcp_user_timeout"] == str(db_engine.TCP_USER_TIMEOUT_MS)
            sock = socket.socket(fileno=driver.fileno())
            try:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 25_000
            finally:
                sock.detach()  # the driver owns the descriptor
    finally:
        engine.dispose()


def test_the_wakeups_listener_uses_the_same_options():
    params = postgres_connect_args()
    assert {"keepalives", "keepalives_idle", "tcp_user_timeout", "connect_timeout"} <= set(params)


def test_redis_broker_options_carry_keepalives_timeouts_and_health_checks(tmp_path):
    url, options = broker_options(
        Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    )
    assert url.startswith("redis://")
    assert options["socket_keepalive"] is True
    assert options["socket_keepalive_options"] == {
        socket.TCP_KEEPIDLE: celery_app.BROKER_KEEPALIVE_IDLE_S,
        socket.TCP_KEEPINTVL: celery_app.BROKER_KEEPALIVE_INTERVAL_S,
        socket.TCP_KEEPCNT: celery_app.BROKER_KEEPALIVE_COUNT,
    }
    assert options["socket_timeout"] == celery_app.BROKER_SOCKET_TIMEOUT_S
    assert options["socket_connect_timeout"] == celery_app.BROKER_CONNECT_TIMEOUT_S
    assert options["health_check_interval"] == celery_app.BROKER_HEALTH_CHECK_S
    # kombu replaces a consumer's overdue BRPOP after brpop_timeout (1 s) + 2 health checks.
    assert 1 + 2 * celery_app.BROKER_HEALTH_CHECK_S <= DEAD_PEER_BUDGET_S
    silent_for = (
        celery_app.BROKER_KEEPALIVE_IDLE_S
        + celery_app.BROKER_KEEPALIVE_INTERVAL_S * celery_app.BROKER_KEEPALIVE_COUNT
    )
    assert silent_for <= DEAD_PEER_BUDGET_S


def test_rabbitmq_broker_options_carry_keepalives(tmp_path):
    _, options = broker_options(
        Settings(data_dir=tmp_path, broker_url="amqp://guest@127.0.0.1:5672//")
    )
    assert options["connect_timeout"] == celery_app.BROKER_CONNECT_TIMEOUT_S
    assert options["socket_settings"] == {
        socket.TCP_KEEPIDLE: celery_app.BROKER_KEEPALIVE_IDLE_S,
        socket.TCP_KEEPINTVL: celery_app.BROKER_KEEPALIVE_INTERVAL_S,
        socket.TCP_KEEPCNT: celery_app.BROKER_KEEPALIVE_COUNT,
    }


@pytest.mark.redis
def test_kombu_hands_them_to_the_redis_client(tmp_path):
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url, options = broker_options(
        Settings(data_dir=tmp_path, broker_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/0")
    )
    with Connection(url, transport_options=options) as connection:
        client = connection.default_channel.client
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_keepalive"] is True
        assert kwargs["socket_keepalive_options"] == options["socket_keepalive_options"]
        assert kwargs["health_check_interval"] == celery_app.BROKER_HEALTH_CHECK_S
        assert kwargs["socket_timeout"] == celery_app.BROKER_SOCKET_TIMEOUT_S
        redis_connection = client.connection_pool.get_connection()
        try:
            redis_connection.connect()
            sock = redis_connection._sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        finally:
            client.connection_pool.release(redis_connection)


def test_s3_clients_carry_keepalives_timeouts_and_bounded_retries():
    storage = make_s3_storage("http://127.0.0.1:9")  # never contacted: clients build lazily
    config = storage.client.meta.config
    assert config.tcp_keepalive is True
    assert config.connect_timeout == s3.CONNECT_TIMEOUT_S
    assert config.read_timeout == s3.READ_TIMEOUT_S
    assert config.retries["total_max_attempts"] == s3.MAX_ATTEMPTS
    # A request on a dead connection: one silent read, then attempts that cannot connect.
    worst = s3.READ_TIMEOUT_S + (s3.MAX_ATTEMPTS - 1) * s3.CONNECT_TIMEOUT_S
    assert worst <= DEAD_PEER_BUDGET_S
