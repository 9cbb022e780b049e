"""One contract for the TaskQueue port, run on every broker: filesystem, Redis and RabbitMQ."""

import socket
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from uuid import uuid4

import pytest
from kombu import Connection

from ports.context import Context
from ports.queue import QueueUnavailable
from schemas.domain.ids import new_id
from schemas.settings import Settings
from tests.services import (
    RABBITMQ_HOST,
    RABBITMQ_PORT,
    REDIS_HOST,
    REDIS_PORT,
    require_service,
)
from workers.celery_app import AssayCelery, broker_options, make_celery
from workers.celery_queue import RUN_JOB_TASK, VALIDATE_DATASET_TASK, CeleryTaskQueue


def _unused() -> Context:
    raise AssertionError("the queue contract never builds a worker context")


def _settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    queue_name = f"assay-test-{uuid4().hex[:10]}"
    if request.param == "filesystem":
        return Settings(data_dir=tmp_path, queue_name=queue_name)
    if request.param == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    else:
        require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
        url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
    return Settings(data_dir=tmp_path, broker_url=url, queue_name=queue_name)


@pytest.fixture(
    params=[
        "filesystem",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def celery_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AssayCelery]:
    settings = _settings(request, tmp_path)
    app = make_celery(settings, _unused)
    yield app
    url, options = broker_options(settings)
    with Connection(url, transport_options=options) as connection:
        connection.SimpleQueue(settings.queue_name).queue.delete()
    app.close()


def receive(app: AssayCelery, timeout: float = 5) -> tuple[str, list[str], str]:
    """Read one raw message from the app's queue, as a worker would, and ack it."""
    settings_queue = app.conf.task_default_queue
    with Connection(
        app.conf.broker_url, transport_options=app.conf.broker_transport_options
    ) as conn:
        simple = conn.SimpleQueue(settings_queue)
        message = simple.get(timeout=timeout)
        message.ack()
        simple.close()
    args, _kwargs, _embed = message.decode()
    return message.headers["task"], args, message.headers["id"]


def test_validation_message_reaches_the_queue(celery_app: AssayCelery):
    dataset_id = new_id()
    CeleryTaskQueue(celery_app).enqueue_dataset_validation(dataset_id)
    task, args, _ = receive(celery_app)
    assert (task, args) == (VALIDATE_DATASET_TASK, [str(dataset_id)])


def test_job_message_uses_the_job_id_as_task_id(celery_app: AssayCelery):
    job_id = new_id()
    CeleryTaskQueue(celery_app).enqueue_job(job_id)
    task, args, task_id = receive(celery_app)
    assert (task, args, task_id) == (RUN_JOB_TASK, [str(job_id)], str(job_id))


def test_every_message_arrives_once(celery_app: AssayCelery):
    # Order is not part of the contract: the filesystem transport is only roughly FIFO.
    queue = CeleryTaskQueue(celery_app)
    ids = [new_id() for _ in range(3)]
    for job_id in ids:
        queue.enqueue_job(job_id)
    assert sorted(receive(celery_app)[1][0] for _ in ids) == sorted(str(i) for i in ids)
    with pytest.raises(Empty):
        receive(celery_app, timeout=0.5)


def test_check_passes_on_a_live_broker(celery_app: AssayCelery):
    CeleryTaskQueue(celery_app).check()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_unreachable_broker_raises_queue_unavailable(tmp_path: Path, scheme: str):
    settings = Settings(data_dir=tmp_path, broker_url=f"{scheme}://127.0.0.1:{_free_port()}//")
    if scheme == "redis":
        settings = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{_free_port()}/0"})
    queue = CeleryTaskQueue(make_celery(settings, _unused))
    with pytest.raises(QueueUnavailable):
        queue.check()
    with pytest.raises(QueueUnavailable):
        queue.enqueue_job(new_id())


def test_filesystem_messages_are_never_visible_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """While a message is being written, the queue folder a consumer polls must not show it."""
    import kombu.transport.filesystem

    import workers.fs_transport

    settings = Settings(data_dir=tmp_path)
    queue_folder = tmp_path / "broker" / "queue"
    seen_while_writing: list[list[str]] = []

    real_dumps = kombu.transport.filesystem.dumps

    def spying_dumps(payload: object) -> str:
        seen_while_writing.append(sorted(p.name for p in queue_folder.iterdir()))
        dumped: str = real_dumps(payload)
        return dumped

    monkeypatch.setattr(kombu.transport.filesystem, "dumps", spying_dumps)
    monkeypatch.setattr(workers.fs_transport, "dumps", spying_dumps)
    app = make_celery(settings, _unused)
    CeleryTaskQueue(app).enqueue_job(new_id())
    assert seen_while_writing and all(listing == [] for listing in seen_while_writing)
    assert len(list(queue_folder.iterdir())) == 1
