"""Python client for the volume query service (``volume serve``); needs no Ray.

    >>> from volume.client import VolumeClient
    >>> c = VolumeClient("http://127.0.0.1:8000", token=None)      # doctest: +SKIP
    >>> c.tables()[0]["name"], c.prior("boolean7", ["0" * 128])[0].p   # doctest: +SKIP
    >>> job = c.submit("boolean7", draws=10**6)                       # doctest: +SKIP
    >>> c.wait(job).state                                             # doctest: +SKIP
    'done'

Every method is one endpoint and sends/receives JSON only. A 4xx/5xx answer raises a
:class:`ServiceError` subclass carrying the server's message and status; a request that
takes longer than ``timeout`` seconds raises :class:`ServiceTimeout`; a server that cannot
be reached raises :class:`ServiceUnavailable`; a request whose work outlived the server's
time budget raises :class:`Busy` (503). The client imports neither Ray, torch nor scipy:
the records it returns come from ``volume.wire`` and ``volume.results``. The token (for job submission) is sent as
``Authorization: Bearer TOKEN``; by default it is read from the VOLUME_TOKEN variable.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Sequence

import httpx

from volume.results import PosteriorResult, PriorEstimate
from volume.frames import Estimates
from volume.wire import TOKEN_ENV, JobStatus


class ServiceError(Exception):
    """The service answered with an error; ``status`` is the HTTP status, ``message`` its text."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class BadRequest(ServiceError):
    """400/422: malformed input (function, spec, indices, ...)."""


class Unauthorized(ServiceError):
    """401/403: a token is needed, or the one given is wrong."""


class NotFound(ServiceError):
    """404: unknown table or job."""


class Conflict(ServiceError):
    """409: e.g. the spec differs from the table's, or a job already writes the table."""


class TooLarge(ServiceError):
    """413: request body or batch above the server's limits."""


class TooManyJobs(ServiceError):
    """429: the server runs as many jobs as it allows."""


class Busy(ServiceError):
    """503: the request's time budget was spent, or the server is busy: retry later or ask for less."""


class TooSlow(ServiceError):
    """408: the request's body did not arrive in time."""


class NotAvailable(ServiceError):
    """501: the feature is not installed on the server."""


class ServiceTimeout(ServiceError):
    """No answer within the timeout (or a job still running when wait() gave up)."""


class ServiceUnavailable(ServiceError):
    """The server cannot be reached."""


class JobFailed(ServiceError):
    """wait(): the job ended in state 'failed' or 'cancelled'; ``job`` is its last status."""

    def __init__(self, job: JobStatus):
        super().__init__(500, f"job {job.id} on table {job.table!r} {job.state}: {job.error}")
        self.job = job


_ERRORS = {400: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict,
           408: TooSlow, 413: TooLarge, 429: TooManyJobs, 501: NotAvailable, 503: Busy}


def _message(response: httpx.Response) -> str:
    """The server's message: FastAPI's ``detail`` (a string, or a list of field errors)."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text or response.reason_phrase
    if isinstance(detail, list):  # request validation errors: [{"loc": [...], "msg": ...}]
        return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in detail)
    return str(detail)


class VolumeClient:
    """Typed access to every endpoint of the service at ``url``."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "VolumeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                 auth: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TimeoutException:
            raise ServiceTimeout(0, f"{method} {self.url}{path}: no answer within {self.timeout} s") from None
        except httpx.TransportError as e:
            raise ServiceUnavailable(0, f"{method} {self.url}{path}: cannot reach the service ({e})") from None
        if response.status_code >= 400:
            raise _ERRORS.get(response.status_code, ServiceError)(response.status_code, _message(response))
        return response.json()

    # ---- endpoints ------------------------------------------------------------------
    def health(self) -> dict:
        """GET /health: status, version, number of tables, whether jobs need a token."""
        return self._request("GET", "/health")

    def tables(self) -> list[dict]:
        """GET /tables: one entry per table (name, spec_id, spec, n_samples, n_distinct, n_blocks)."""
        return self._request("GET", "/tables")

    def table(self, name: str) -> dict:
        """GET /tables/NAME: the table's summary (``FrequencyTable.info`` plus unseen mass and entropy)."""
        return self._request("GET", f"/tables/{name}")

    def prior(self, name: str, functions: Iterable[str], confidence: float = 0.95) -> list[PriorEstimate]:
        """POST /tables/NAME/prior: P(f) with counts and intervals for functions given as
        '0'/'1' strings or hex keys (0x...)."""
        rows = self._request("POST", f"/tables/{name}/prior",
                             json={"functions": list(functions), "confidence": confidence})
        return Estimates(PriorEstimate(**r) for r in rows)

    def posterior(self, name: str, train_indices: Sequence[int] | str, train_labels: str | Sequence[int] | None = None,
                  target: str | None = None, *, confidence: float = 0.95, delta: float = 0.05,
                  top: int = 10) -> PosteriorResult:
        """POST /tables/NAME/posterior: P(U) with its interval, the generalization error and its
        distribution against ``target`` (a rule such as 'parity', or a function), top functions."""
        body = {"train_indices": train_indices if isinstance(train_indices, str) else [int(i) for i in train_indices],
                "train_labels": train_labels if train_labels is None or isinstance(train_labels, str)
                else [int(x) for x in train_labels],
                "target": target, "confidence": confidence, "delta": delta, "top": top}
        return PosteriorResult(**self._request("POST", f"/tables/{name}/posterior", json=body))

    def top(self, name: str, k: int = 10, confidence: float = 0.95) -> list[PriorEstimate]:
        """GET /tables/NAME/top?k=K: the k most frequent functions with their estimates."""
        rows = self._request("GET", f"/tables/{name}/top", params={"k": k, "confidence": confidence})
        return Estimates(PriorEstimate(**r) for r in rows)

    def submit(self, table: str, draws: int, spec: dict | None = None, add: bool = False) -> JobStatus:
        """POST /jobs: sample until ``table`` holds ``draws`` draws (or ``draws`` more with
        ``add``); ``spec`` (a JSON dict, ``ExperimentSpec.to_dict()``) creates a new table."""
        body = {"table": table, "draws": draws, "spec": spec, "add": add}
        return JobStatus.from_dict(self._request("POST", "/jobs", json=body, auth=True))

    def cancel(self, job: JobStatus | str) -> JobStatus:
        """DELETE /jobs/ID: stop a job (it saves the draws it counted and ends in state
        'cancelled' within about a second; follow it with :meth:`wait` or :meth:`job`).
        Needs the token, as submission does."""
        job_id = job.id if isinstance(job, JobStatus) else job
        return JobStatus.from_dict(self._request("DELETE", f"/jobs/{job_id}", auth=True))

    def job(self, job: JobStatus | str) -> JobStatus:
        """GET /jobs/ID: a job's progress."""
        job_id = job.id if isinstance(job, JobStatus) else job
        return JobStatus.from_dict(self._request("GET", f"/jobs/{job_id}"))

    def jobs(self) -> list[JobStatus]:
        """GET /jobs: every job this server has run since it started."""
        return [JobStatus.from_dict(d) for d in self._request("GET", "/jobs")]

    def gp_estimate(self, labels: str | Sequence[int], spec: dict | None = None, table: str | None = None, *,
                    method: str = "auto", samples: int | None = None, seed: int = 0, likelihood: str = "heaviside",
                    kernel: str = "analytic", kernel_samples: int = 1024) -> dict:
        """POST /gp/estimate: the GP estimate of ln P(f) for ``labels`` (a labelling, hex key or target
        rule such as 'majority' or 'ge5') on the inputs of ``spec`` (or of ``table``'s spec): ``log_p``,
        its ``stderr``, the ``method`` used, whether it is ``reliable`` (else ``reason``) and its
        ``diagnostics``. ``method``: auto | ep | ep-is | ep-sis | tilting; ``kernel``: analytic |
        empirical (``kernel_samples`` networks)."""
        body = {"labels": labels if isinstance(labels, str) else [int(x) for x in labels], "spec": spec, "table": table,
                "method": method, "samples": samples, "seed": seed, "likelihood": likelihood, "kernel": kernel,
                "kernel_samples": kernel_samples}
        return self._request("POST", "/gp/estimate", json=body)

    def logp(self, functions: Iterable[str | Sequence[int]], spec: dict | None = None, table: str | None = None,
             method: str = "auto", seed: int = 0, **nested: Any) -> list[dict]:
        """POST /logp: ln P(f) of each function by ``method`` (auto | count | ep | gp | nested, see
        ``volume.logp``) on ``spec``'s inputs or ``table``'s; ``nested`` takes particles,
        replicas, p0, moves, kernel ('pcn' | 'ess'). Each answer has log_p, stderr, upper_bound, reason, diagnostics."""
        body = {"functions": [f if isinstance(f, str) else [int(x) for x in f] for f in functions],
                "spec": spec, "table": table, "method": method, "seed": seed, **nested}
        return self._request("POST", "/logp", json=body)

    def wait(self, job: JobStatus | str, timeout: float | None = None, poll: float = 0.5,
             on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Follow a job until it is done and return its last status; raise JobFailed if it
        failed or was cancelled, ServiceTimeout if it is still running after ``timeout`` seconds."""
        start = time.monotonic()
        while True:
            status = self.job(job)
            if on_progress is not None:
                on_progress(status)
            if status.state == "done":
                return status
            if status.state in ("failed", "cancelled"):
                raise JobFailed(status)
            if timeout is not None and time.monotonic() - start > timeout:
                raise ServiceTimeout(0, f"job {status.id} still {status.state} after {timeout} s "
                                        f"({status.draws_done} of {status.draws_target} draws)")
            time.sleep(poll)
