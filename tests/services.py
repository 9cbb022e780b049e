"""Reaching the real services tests need: skip on a laptop without them, fail in CI."""

import os
import socket

import pytest


def services_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("ASSAY_REQUIRE_SERVICES") == "1"


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail, when services are required) if a service's port does not answer."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if services_required():
        pytest.fail(f"{message} (CI=true or ASSAY_REQUIRE_SERVICES=1: services are required)")
    pytest.skip(message)


POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
