"""Schemathesis over the OpenAPI document: the API over in-memory fakes, with a valid key.

Every operation gets generated requests, valid and invalid; every response must have a
documented status, content type, headers and body, and none may be a 5xx. A stateful run
follows the links between operations (upload -> dataset routes, job -> job routes) and checks
that what was created stays reachable until deleted, and not after.
"""

import atexit
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

from api.app import create_app
from schemas.domain.records import KeyScope
from schemas.settings import Settings
from services.adapters.wakeups.polling import PollingJobWakeups
from tests.fakes import FakeContext, FakeQueue, FakeStorage, FakeUnitOfWork
from tests.unit.test_owners_api import ALICE, seed
from use_cases.keys import create_key

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Across calls: a resource answered for stays reachable until deleted, and not after; a route
# that documents a key refuses a call without one.
STATEFUL_CHECKS = [use_after_free, ensure_resource_availability, ignored_auth]
SUPPRESSED = list(HealthCheck)  # generation is slow on multipart bodies; that is fine here

# Schemathesis reads the document when the module is collected (its fixture-based loader
# fails on this pytest's nodes), so the app is built here, over fakes that `reset` brings back
# to one state before every example: each generated call or sequence starts from it.
DATA_DIR = Path(tempfile.mkdtemp(prefix="assay-fuzz-"))
atexit.register(shutil.rmtree, DATA_DIR, ignore_errors=True)
_KEY_UOW = FakeUnitOfWork()
KEY, SECRET = create_key(_KEY_UOW, owner_id=ALICE, scope=KeyScope.admin)
AUTH = {"Authorization": f"Bearer {SECRET}"}
_state: dict[str, FakeUnitOfWork] = {}
CONTEXT = FakeContext(
    # No rate limit: the run stays deterministic (tests/unit/test_limits.py covers the 429).
    settings=Settings(
        _env_file=None,
        data_dir=DATA_DIR,
        max_upload_bytes=1024 * 1024,
        rate_limit_writes_per_minute=0,
    ),
    new_uow=lambda: _state["uow"],
    datasets_storage=FakeStorage(),
    results_storage=FakeStorage(),
    queue=FakeQueue(),
)


def reset() -> None:
    """The key's owner has a ready dataset and a completed job with an artifact (and a running
    job), as test_owners_api seeds them; nothing else is stored."""
    uow = FakeUnitOfWork()
    uow.api_keys.add(KEY)
    _state["uow"] = uow
    CONTEXT.datasets_storage.objects.clear()
    CONTEXT.results_storage.objects.clear()
    seed(CONTEXT)


reset()
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(CONTEXT, PollingJobWakeups()))
# Every request carries the key; no generated Authorization header replaces it.
schema.config.update(headers=AUTH)
schema.config.generation.update(with_security_parameters=False)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=timedelta(seconds=2),
    suppress_health_check=SUPPRESSED,
    derandomize=True,
    database=None,
)
def test_every_operation_answers_as_documented(case):
    reset()
    case.call_and_validate(checks=[*CHECKS, ignored_auth], headers=AUTH)


# Sequences leave out revoking keys (the first revoke of the run's own key ends the sequence
# in 401s) and the event stream (a queued job's stream only ends with the job, and no worker
# runs here; tests/e2e covers the stream).
SEQUENCES = schema.exclude(path_regex=r"/(revoke|stream)$")


class CallSequences(SEQUENCES.as_state_machine()):  # type: ignore[misc]
    def setup(self) -> None:
        reset()

    def validate_response(
        self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        case.validate_response(
            response,
            checks=CHECKS + STATEFUL_CHECKS,
            headers=AUTH,  # the key is the run's own, so a probe without it must get 401
            transport_kwargs=kwargs or None,
            recorder=self.recorder,
        )


def test_sequences_of_calls_answer_as_documented():
    CallSequences.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=SUPPRESSED,
            derandomize=True,
            database=None,
        )
    )
