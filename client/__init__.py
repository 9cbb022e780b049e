"""Python client of the Assay HTTP API: datasets, processors and jobs, with typed results.

Talks to a server over HTTP only (httpx): it imports nothing of the server's code.

    from client import AssayClient

    with AssayClient() as assay:  # ASSAY_URL / ASSAY_API_KEY, else http://127.0.0.1:8000
        dataset = assay.datasets.upload("data.csv", wait=True)
        job = assay.jobs.submit(dataset.id, [{"processor": "metrics"}])
        for event in assay.jobs.stream(job.id):
            print(event.type, event.progress)
        print(assay.jobs.result(job.id).steps)
"""

from client.api import AssayClient, DatasetsApi, JobsApi
from client.errors import ApiError, AssayClientError, AssayConnectionError, WaitTimeout
from client.models import (
    Artifact,
    Column,
    Dataset,
    FailedRow,
    FailedRowPage,
    Job,
    JobEvent,
    JobResult,
    Preview,
    Processor,
)

__all__ = [
    "ApiError",
    "Artifact",
    "AssayClient",
    "AssayClientError",
    "AssayConnectionError",
    "Column",
    "Dataset",
    "DatasetsApi",
    "FailedRow",
    "FailedRowPage",
    "Job",
    "JobEvent",
    "JobResult",
    "JobsApi",
    "Preview",
    "Processor",
    "WaitTimeout",
]
