"""The job and dataset state machines: every legal status change, on one screen.

Writers go through use_cases/lifecycle.py, and the repositories' `transition` calls the same
checks, so a pair missing here is refused everywhere.
"""

from collections.abc import Sequence

from schemas.domain.records import DatasetStatus, JobStatus

_J, _D = JobStatus, DatasetStatus

# A job is created `queued` (event `created`); each legal move, with the event(s) recording it.
JOB_TRANSITIONS: dict[tuple[JobStatus, JobStatus], tuple[str, ...]] = {
    (_J.queued, _J.running): ("started",),  # a worker claimed it (attempt + 1)
    (_J.running, _J.completed): ("completed",),
    (_J.running, _J.failed): ("failed",),  # a data error, or out of attempts
    (_J.queued, _J.failed): ("failed",),  # its dataset failed validation, or a step cannot run
    (_J.running, _J.cancelled): ("cancelled",),  # the worker (or the reaper) saw the flag
    (_J.queued, _J.cancelled): ("cancelled",),  # cancelled before any worker claimed it
    # The worker hit a transient error ("retried") or the reaper found it silent ("requeued").
    (_J.running, _J.queued): ("retried", "requeued"),
}

# A dataset is created `uploaded`; datasets have no event history, hence a reason only.
DATASET_TRANSITIONS: dict[tuple[DatasetStatus, DatasetStatus], str] = {
    (_D.uploaded, _D.validating): "a worker claimed the validation",
    (_D.validating, _D.ready): "validated: typed copy and failed rows written",
    (_D.validating, _D.failed): "unusable file, or the final attempt hit an error",
    (_D.validating, _D.uploaded): "a retry (or the reaper) puts it back for another attempt",
}

JOB_INITIAL_STATUS = _J.queued
# No way out: a finished job is never overwritten (by a late worker, the reaper, a cancel).
FINISHED_JOB_STATUSES = tuple(s for s in JobStatus if s not in {a for a, _ in JOB_TRANSITIONS})


class IllegalTransition(ValueError):
    """A status change (or its event name) that the state machine does not allow."""


def job_transition_event(
    from_status: JobStatus, to_status: JobStatus, event_type: str | None = None
) -> str:
    """The event recording a legal job move (`event_type` must be one of its names)."""
    from_status, to_status = JobStatus(from_status), JobStatus(to_status)
    names = JOB_TRANSITIONS.get((from_status, to_status))
    if names is None:
        raise IllegalTransition(
            f"job cannot go from {from_status.value} to {to_status.value}; legal moves: "
            + ", ".join(f"{a.value}->{b.value}" for a, b in JOB_TRANSITIONS)
        )
    if event_type is None:
        if len(names) > 1:
            raise IllegalTransition(
                f"job {from_status.value}->{to_status.value} is recorded as one of "
                f"{', '.join(names)}: say which"
            )
        return names[0]
    if event_type not in names:
        raise IllegalTransition(
            f"job {from_status.value}->{to_status.value} is recorded as "
            f"{' or '.join(names)}, not {event_type!r}"
        )
    return event_type


def check_job_transition(from_statuses: Sequence[JobStatus], to_status: JobStatus) -> None:
    """Raise IllegalTransition unless every `from -> to_status` is a legal job move."""
    for from_status in from_statuses:
        if (JobStatus(from_status), JobStatus(to_status)) not in JOB_TRANSITIONS:
            job_transition_event(from_status, to_status)  # raises, with the legal moves


def check_dataset_transition(
    from_statuses: Sequence[DatasetStatus], to_status: DatasetStatus
) -> None:
    """Raise IllegalTransition unless every `from -> to_status` is a legal dataset move."""
    for from_status in from_statuses:
        if (DatasetStatus(from_status), DatasetStatus(to_status)) not in DATASET_TRANSITIONS:
            raise IllegalTransition(
                f"dataset cannot go from {DatasetStatus(from_status).value} to "
                f"{DatasetStatus(to_status).value}; legal moves: "
                + ", ".join(f"{a.value}->{b.value}" for a, b in DATASET_TRANSITIONS)
            )
