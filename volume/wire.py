"""What the service and its client agree on, at library level so that neither imports the
other: the token's environment variable and the job record of ``/jobs``.

A job moves queued -> running -> done | failed | cancelled; ``error`` says why a job failed
or who cancelled it. Nothing here imports more than the standard library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

TOKEN_ENV = "VOLUME_TOKEN"  # job submission and cancellation need 'Authorization: Bearer $VOLUME_TOKEN'
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass
class JobStatus:
    """A sampling job as the service reports it (the wire schema of /jobs)."""

    id: str
    table: str
    spec_id: str
    state: str  # queued | running | done | failed | cancelled
    draws_target: int  # draws the table will hold when the job is done
    draws_done: int  # draws the table holds now (counted, not yet necessarily saved)
    draws_initial: int  # draws the table held when the job started
    submitted: float  # unix time
    finished: float | None = None
    rate: float | None = None  # draws per second since the job started
    eta_s: float | None = None
    n_distinct: int | None = None  # distinct functions when done
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobStatus":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
