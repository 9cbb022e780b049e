"""TaskQueue adapter publishing Celery messages (Redis, RabbitMQ or the filesystem transport)."""

from uuid import UUID

from celery import Celery
from kombu.exceptions import OperationalError

from ports.queue import QueueUnavailable

VALIDATE_DATASET_TASK = "assay.validate_dataset"
IMPORT_DATASET_TASK = "assay.import_dataset"
RUN_JOB_TASK = "assay.run_job"
RUN_EXPORT_TASK = "assay.run_export"

# Publishing must not hang a request when the broker is down: the row is already
# committed and the reaper re-publishes it later.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


class CeleryTaskQueue:
    """Publishes task messages by name, so the API never imports worker code."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def _send(self, task: str, entity_id: UUID, task_id: str) -> None:
        try:
            self._app.send_task(
                task,
                args=[str(entity_id)],
                task_id=task_id,
                queue=self._app.conf.task_default_queue,
                retry=True,
                retry_policy=_PUBLISH_RETRY_POLICY,
            )
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"could not publish {task} for {entity_id}: {exc}") from exc

    def enqueue_dataset_validation(self, dataset_id: UUID) -> None:
        self._send(VALIDATE_DATASET_TASK, dataset_id, f"validate-{dataset_id}")

    def enqueue_dataset_import(self, dataset_id: UUID) -> None:
        self._send(IMPORT_DATASET_TASK, dataset_id, f"import-{dataset_id}")

    def enqueue_job(self, job_id: UUID) -> None:
        self._send(RUN_JOB_TASK, job_id, str(job_id))

    def enqueue_export(self, export_id: UUID) -> None:
        self._send(RUN_EXPORT_TASK, export_id, f"export-{export_id}")

    def revoke_job(self, job_id: UUID) -> None:
        try:
            self._app.control.revoke(str(job_id), terminate=False)
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"could not revoke job {job_id}: {exc}") from exc

    def check(self) -> None:
        try:
            with self._app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        except (OperationalError, OSError) as exc:
            raise QueueUnavailable(f"broker unreachable: {exc}") from exc
