"""The volume query service: a Ray Serve application (FastAPI ingress) over a directory of
tables. ``volume serve --tables DIR`` runs it; ``cluster/serve.yaml`` deploys it with
``serve deploy`` (entry point :func:`build`). OpenAPI docs are at /docs.

Endpoints (JSON in and out; no pickle crosses the wire):

    GET  /health                      status, version, number of tables, whether jobs need a token
    GET  /tables                      every table: name, spec, N, distinct functions, blocks
    GET  /tables/{name}               one table: info, Good-Turing unseen mass, entropy
    POST /tables/{name}/prior         P(f) for a batch of functions (hex or '0'/'1'): count, interval
    POST /tables/{name}/posterior     P(U) and interval, generalization error and its distribution, top f
    GET  /tables/{name}/top?k=        the k most frequent functions
    POST /jobs                        sample into a table (creates or extends it); bearer token if configured
    GET  /jobs, /jobs/{id}            job progress (finished jobs expire from the list)
    DELETE /jobs/{id}                 cancel a job (its counted draws are saved); bearer token if configured
    POST /gp/estimate                 volume.gp.estimate.log_prior(spec, labels, method=...): ln P(f), its
                                      standard error, method and diagnostics (501 if not installed)
    POST /logp                        volume.logp.log_p(spec, f, method): count | ep | gp | nested, bounded work

A table is ``DIR/NAME.h5``; NAME fully matches ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (no path
separators, no '..', no newline), so a request can never name a file outside DIR. Tables are cached
and reloaded when their file changes (mtime, size or inode: a job's checkpoint is an atomic
rename), so a table that a job extends is served without a restart.

Bad input never gives a 500: a malformed body is a 422 (FastAPI's validation), a bad function,
spec or index a 400 with the library's message (VolumeError), an unknown table or job a 404,
a spec that differs from the table's a 409, a body, batch or job above the limits a 413, a
missing or wrong token a 401/403. Bodies are parsed strictly before FastAPI sees them
(:class:`RequestGuard`): NaN/Infinity, numbers beyond 64 bits, nesting deeper than
``max_json_depth`` are a 400, a body slower than ``body_seconds`` a 408. What each request and
job may cost is bounded by ``volume.limits`` (413 with the reason, checked before any work);
the work itself runs in a bounded pool with a time budget (:class:`WorkBudget`, 503 when it
is spent or the pool is full). Error messages never show the server's directories.
Job submission and cancellation require ``Authorization: Bearer TOKEN`` when a token is
configured (environment variable VOLUME_TOKEN); only its SHA-256 is kept.

The application is two deployments: the ingress (:class:`VolumeIngress`, any number of
replicas, state-free apart from its table cache) and :class:`JobRunner` (one replica) that
runs sampling jobs as Ray tasks through :func:`volume.jobs.run_job` and keeps their
progress. The same FastAPI app runs without Ray over :class:`LocalJobs` (tests, debugging).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from volume import __version__
from volume.checks import json_safe
from volume.errors import VolumeError
from volume.estimate import entropy_bits, good_turing_unseen, posterior, prior_estimates, top_estimates
from volume.limits import Limits, cap, check_gp, check_job, check_logp
from volume.parsing import check_indices, parse_indices, resolve_target
from volume.runner import JobCancelled, missing_blocks, run_local, table_lock
from volume.spec import ExperimentSpec, ImageSubset
from volume.table import FrequencyTable
from volume.wire import TOKEN_ENV, JobStatus

TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
JSON_INT_DIGITS = 19  # integers in a body: at most 19 digits (below 2^63), else 400

__all__ = ["Limits", "LocalJobs", "VolumeAPI", "application", "build", "build_app", "http_options", "token_digest"]


class ApiError(Exception):
    """An answer other than 200 with a message (HTTP status, text)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def token_digest(token: str | None) -> str | None:
    return None if not token else hashlib.sha256(token.encode()).hexdigest()


def _safe_text(x: Any, limit: int = 300) -> str:
    """A short printable form of anything (an error handler must not fail on it)."""
    try:
        text = str(x)
    except Exception:  # noqa: BLE001 (whatever __str__ raises, the handler answers)
        text = f"<{type(x).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


# ---- tables -------------------------------------------------------------------------
class TableStore:
    """The tables of one directory, loaded on first use and reloaded when the file changes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise VolumeError(f"tables directory {str(root)!r} does not exist: create it, or serve another directory")
        self._cache: dict[str, tuple[tuple, FrequencyTable]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def valid_name(name: str) -> bool:
        return TABLE_NAME.fullmatch(name) is not None and ".." not in name

    @classmethod
    def check_name(cls, name: str) -> str:
        name = name[:-3] if name.endswith(".h5") else name
        if not cls.valid_name(name):
            raise ApiError(400, f"table name {name[:80]!r} is invalid: use letters, digits, '_', '-', '.' "
                                "(no path separators, no '..'), e.g. 'boolean7'")
        return name

    def path(self, name: str) -> Path:
        return self.root / f"{self.check_name(name)}.h5"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.h5") if self.valid_name(p.stem))

    def get(self, name: str, missing_ok: bool = False) -> FrequencyTable | None:
        path = self.path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise ApiError(404, f"no table named {self.check_name(name)!r}: GET /tables lists the tables") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            table = FrequencyTable.load(path)
            self._cache[name] = (stamp, table)
            return table


# ---- jobs -------------------------------------------------------------------------
Runner = Callable[..., FrequencyTable]


def _local_runner(spec: ExperimentSpec, n: int, path: str, *, on_block, checkpoint_seconds: float, stop,
                  max_retries: int) -> FrequencyTable:
    with table_lock(path):
        return run_local(spec, n, path, on_block=on_block, checkpoint_seconds=checkpoint_seconds, stop=stop)


def _ray_runner(spec: ExperimentSpec, n: int, path: str, *, on_block, checkpoint_seconds: float, stop,
                max_retries: int) -> FrequencyTable:
    from volume.jobs import run_job

    return run_job(spec, n, path, on_block=on_block, checkpoint_seconds=checkpoint_seconds, stop=stop,
                   max_retries=max_retries)


class LocalJobs:
    """Runs sampling jobs in background threads of this process and keeps their status.
    Answers are dicts: a job's status, or {"refused": HTTP status, "message": text}.

    A job can be cancelled (it stops within about a second and saves what it counted);
    finished jobs stay in the list for ``limits.finished_job_ttl_s`` and at most
    ``limits.max_finished_jobs`` of them are kept."""

    def __init__(self, runner: Runner = _local_runner, max_active: int | None = None, checkpoint_seconds: float = 5.0,
                 limits: Limits | None = None):
        self.runner = runner
        self.limits = limits or Limits()
        self.max_active = max_active if max_active is not None else self.limits.max_active_jobs
        self.checkpoint_seconds = checkpoint_seconds
        self._jobs: dict[str, JobStatus] = {}
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _expire(self) -> None:
        """Drop finished jobs older than the TTL, and the oldest beyond the count (lock held)."""
        now = time.time()
        finished = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.finished or 0)
        for i, j in enumerate(finished):
            if now - (j.finished or now) > self.limits.finished_job_ttl_s or i < len(finished) - self.limits.max_finished_jobs:
                del self._jobs[j.id]
                self._stops.pop(j.id, None)

    def submit(self, table: str, path: str, spec: dict, n_draws: int, initial: int, target: int) -> dict:
        spec_obj = ExperimentSpec.from_dict(spec)
        with self._lock:
            self._expire()
            active = [j for j in self._jobs.values() if j.active]
            if any(j.table == table for j in active):
                return {"refused": 409, "message": f"a job is already sampling table {table!r}: wait for it "
                                                 "(GET /jobs/ID), or cancel it (DELETE /jobs/ID), and submit again"}
            if len(active) >= self.max_active:
                return {"refused": 429, "message": f"{len(active)} jobs are running, the most this server allows: "
                                                 "submit again when one has finished, or cancel one (DELETE /jobs/ID)"}
            job = JobStatus(id=uuid.uuid4().hex[:16], table=table, spec_id=spec_obj.spec_id, state="running",
                            draws_target=target, draws_done=initial, draws_initial=initial, submitted=time.time())
            self._jobs[job.id] = job
            self._stops[job.id] = threading.Event()
        threading.Thread(target=self._run, args=(job, spec_obj, n_draws, path, self._stops[job.id]), daemon=True,
                         name=f"volume-job-{job.id}").start()
        return self.status(job.id)

    def _run(self, job: JobStatus, spec: ExperimentSpec, n_draws: int, path: str, stop: threading.Event) -> None:
        def on_block(draws: int) -> None:
            with self._lock:
                job.draws_done += draws

        try:
            table = self.runner(spec, n_draws, path, on_block=on_block, checkpoint_seconds=self.checkpoint_seconds,
                                stop=stop.is_set, max_retries=self.limits.max_block_retries)
            with self._lock:
                job.state, job.draws_done, job.n_distinct = "done", table.n_samples, table.n_distinct
        except JobCancelled as e:
            with self._lock:
                job.state, job.error = "cancelled", str(e)
        except Exception as e:  # reported through the job's status
            with self._lock:
                job.state, job.error = "failed", f"{type(e).__name__}: {_safe_text(e, 1000)}"
        finally:
            job.finished = time.time()

    def cancel(self, job_id: str) -> dict | None:
        """Ask a job to stop; answers its status (still 'running' until it has saved)."""
        with self._lock:
            stop = self._stops.get(job_id)
        if stop is None:
            return None
        stop.set()
        return self.status(job_id)

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            out = dataclasses.replace(job)
        elapsed = (out.finished or time.time()) - out.submitted
        done = out.draws_done - out.draws_initial
        if elapsed > 0 and done > 0:
            out.rate = done / elapsed
            out.eta_s = max(out.draws_target - out.draws_done, 0) / out.rate if out.active else 0.0
        return out.to_dict()

    def list(self) -> list[dict]:
        with self._lock:
            self._expire()
            ids = list(self._jobs)
        return [s for s in (self.status(i) for i in ids) if s is not None]


# ---- requests -----------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriorRequest(_Body):
    functions: list[str] = Field(..., description="functions: '0'/'1' strings (one label per input) or 0x-hex keys")
    confidence: float = Field(0.95, gt=0, lt=1)


class PosteriorRequest(_Body):
    train_indices: list[int] | str = Field(..., description="training inputs: a list, or '0-63,70'")
    train_labels: str | list[int] | None = Field(None, description="one label per training index; default: the target's")
    target: str | None = Field(None, description="target on all inputs: a rule (parity, majority, ...) or a function")
    confidence: float = Field(0.95, gt=0, lt=1)
    delta: float = Field(0.05, gt=0, lt=1)
    top: int = Field(10, ge=0)


class JobRequest(_Body):
    table: str = Field(..., description="table name (the file DIR/NAME.h5)")
    draws: int = Field(..., ge=1, description="draws the table should hold (or add, with add=true)")
    spec: dict[str, Any] | None = Field(None, description="ExperimentSpec as JSON; needed to create a table")
    add: bool = False


class GPRequest(_Body):
    labels: str | list[int] = Field(..., description="the function: '0'/'1' string, hex key, label list, or a "
                                                     "target rule as the CLI takes it (parity, majority, ge5, bits:...)")
    spec: dict[str, Any] | None = None
    table: str | None = Field(None, description="instead of spec: use this table's spec")
    method: str = Field("auto", description="auto | ep | ep-is | ep-sis | tilting (volume.gp.score)")
    samples: int | None = Field(None, ge=2, description="draws of the Monte-Carlo method (default 2048)")
    seed: int = Field(0, ge=0, description="seed of the Monte-Carlo draws")
    likelihood: str = Field("heaviside", description="heaviside | probit")
    kernel: str = Field("analytic", description="analytic (FCN, or CNN with pool avg/none; relu/erf) | empirical (any spec)")
    kernel_samples: int = Field(1024, ge=2, description="networks of the empirical kernel")


# ---- bounded work -------------------------------------------------------------------
class WorkBudget:
    """Runs the work of requests in a pool of ``limits.max_busy_requests`` threads with a time
    budget: a request waits at most ``request_seconds`` for a free thread and for its
    answer, then gets a 503 saying so. A thread keeps working on an overdue request (Python
    cannot stop it), so the pool's size bounds the CPU that requests can hold at once, and
    every request's work is bounded beforehand by the cost checks of ``volume.limits``."""

    def __init__(self, limits: Limits):
        self.seconds = limits.request_seconds
        self.size = limits.max_busy_requests
        self._slots = threading.BoundedSemaphore(self.size)
        self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="volume-work")

    def _call(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            self._slots.release()

    def run(self, what: str, fn: Callable, *args, **kwargs):
        start = time.monotonic()
        if not self._slots.acquire(timeout=self.seconds):
            raise ApiError(503, f"the server is busy ({self.size} requests computing for more than {self.seconds:g} s): "
                                "retry later")
        future = self._pool.submit(self._call, fn, args, kwargs)
        try:
            return future.result(timeout=max(0.0, self.seconds - (time.monotonic() - start)))
        except FutureTimeout:
            raise ApiError(503, f"{what} took longer than this server's time budget of {self.seconds:g} s: "
                                "ask for less (fewer functions, a smaller table or spec)") from None


class LogPRequest(_Body):
    functions: list[str | list[int]] = Field(..., min_length=1, description="functions: '0'/'1' strings, hex keys, "
                                                                            "target rules or label lists")
    spec: dict[str, Any] | None = None
    table: str | None = Field(None, description="instead of spec: this table's spec (and its counts for 'count'/'auto')")
    method: str = Field("auto", description="auto | count | ep | gp | nested (volume.logp.log_p)")
    seed: int = Field(0, ge=0)
    # nested settings: bounds and defaults live in one place, volume.nested.NestedSettings.from_mapping
    # (a bad value is a 400 naming the field); only the JSON type is checked here (strict: no
    # true for 1, no "0.5" for 0.5; a 422 naming the field); null keeps the default
    particles: int | None = Field(None, strict=True, description="nested: particles per replica")
    replicas: int | None = Field(None, strict=True, description="nested: independent replicas (the error bar)")
    p0: float | None = Field(None, strict=True, description="nested: fraction kept per level, in (0, 1)")
    moves: int | None = Field(None, strict=True, description="nested: MCMC steps per particle per level")
    kernel: str | None = Field(None, strict=True, description="nested: 'pcn' (preconditioned Crank-Nicolson, default) or 'ess' "
                                                 "(elliptical slice sampling; its worst case counts max_shrink "
                                                 "evaluations per step against the work limit)")


# ---- the API, free of HTTP and Ray ------------------------------------------------------
class VolumeAPI:
    """What each endpoint does; ``jobs`` is a LocalJobs or a handle to the JobRunner deployment."""

    def __init__(self, tables_dir: str | Path, *, jobs: Any = None, token_sha256: str | None = None,
                 limits: Limits | None = None, data_dir: str | Path | None = None):
        self.store = TableStore(tables_dir)
        self.limits = limits or Limits()
        self.jobs = jobs if jobs is not None else LocalJobs(limits=self.limits)
        self.token_sha256 = token_sha256
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.work = WorkBudget(self.limits)

    # -- helpers
    def redact(self, text: str) -> str:
        """``text`` without the server's directories (tables, data), so that an error message
        does not tell a client where things live on this machine."""
        text = text.replace(str(self.store.root) + "/", "").replace(str(self.store.root), "<tables>")
        if self.data_dir is not None:
            text = text.replace(str(self.data_dir) + "/", "").replace(str(self.data_dir), "<data>")
        return text

    def authorize(self, authorization: str | None) -> None:
        if self.token_sha256 is None:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "job submission and cancellation need a token: send 'Authorization: Bearer TOKEN' "
                                f"(the client reads {TOKEN_ENV})")
        if not hmac.compare_digest(token_digest(authorization[7:].strip()) or "", self.token_sha256):
            raise ApiError(403, "the token is wrong")

    def parse_spec(self, d: dict) -> ExperimentSpec:
        try:
            spec = ExperimentSpec.from_dict(d)
        except VolumeError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError) as e:
            raise ApiError(400, f"invalid spec: {_safe_text(e)}") from None
        return self._localize(spec)

    def _localize(self, spec: ExperimentSpec) -> ExperimentSpec:
        """Image inputs are read only from inside the server's data directory."""
        if not isinstance(spec.inputs, ImageSubset) or spec.inputs.dataset == "digits":
            return spec
        if self.data_dir is None:
            raise ApiError(400, "this server has no data directory, so it cannot read image inputs: "
                                "use a Boolean or 'digits' spec")
        p = Path(spec.inputs.path)
        resolved = (p if p.is_absolute() else self.data_dir / p).resolve()
        if resolved != self.data_dir and self.data_dir not in resolved.parents:
            raise ApiError(400, f"spec field 'inputs.path' = {spec.inputs.path[:200]!r} is outside the server's data "
                                "directory: give a path relative to it (or '')")
        return spec.replace(inputs=dataclasses.replace(spec.inputs, path=str(resolved)))

    # -- endpoints
    def health(self) -> dict:
        return {"status": "ok", "version": __version__, "tables": len(self.store.names()),
                "jobs_need_token": self.token_sha256 is not None}

    def list_tables(self) -> list[dict]:
        return self.work.run("listing the tables", self._list_tables)

    def _list_tables(self) -> list[dict]:
        out = []
        for name in self.store.names():
            try:
                t = self.store.get(name)
                out.append({"name": name, "spec_id": t.spec_id, "spec": t.spec.to_dict(), "n_samples": t.n_samples,
                            "n_distinct": t.n_distinct, "n_blocks": int(len(t.blocks))})
            except (VolumeError, ApiError) as e:  # a corrupt file does not hide the others
                out.append({"name": name, "error": self.redact(str(e))})
        return out

    def table_info(self, name: str) -> dict:
        return self.work.run(f"summarising table {name[:80]!r}", self._table_info, name)

    def _table_info(self, name: str) -> dict:
        t = self.store.get(name)
        info = {"name": self.store.check_name(name), **t.info()}
        if t.n_samples:
            info["good_turing_unseen_mass"] = good_turing_unseen(t)
            info["entropy_bits"] = entropy_bits(t)
        return info

    def prior(self, name: str, req: PriorRequest) -> list[dict]:
        cap("number of functions", len(req.functions), self.limits.max_functions)
        return self.work.run("P(f) of a batch", self._prior, name, req)

    def _prior(self, name: str, req: PriorRequest) -> list[dict]:
        t = self.store.get(name)
        if t.n_samples == 0:
            raise ApiError(409, f"table {name!r} is empty: sample into it first")
        return [e.to_dict() for e in prior_estimates(t, req.functions, req.confidence)]

    def posterior(self, name: str, req: PosteriorRequest) -> dict:
        cap("top", req.top, self.limits.max_top)
        return self.work.run("the posterior", self._posterior, name, req)

    def _posterior(self, name: str, req: PosteriorRequest) -> dict:
        t = self.store.get(name)
        idx = (parse_indices(req.train_indices, t.n_inputs, "train_indices") if isinstance(req.train_indices, str)
               else check_indices(req.train_indices, t.n_inputs, "train_indices"))
        target = resolve_target(t, req.target) if req.target else None
        labels = req.train_labels
        if labels is None:
            if target is None:
                raise ApiError(400, "give train_labels, or a target that provides them")
            labels = target[idx]
        elif not isinstance(labels, str):
            if len(labels) != idx.size or any(not 0 <= v < t.classes for v in labels):
                raise ApiError(400, f"train_labels: give {idx.size} labels (one per training index), each in "
                                    f"0..{t.classes - 1}")
            labels = np.asarray(labels, dtype=np.int64)
        res = posterior(t, idx, labels, target, confidence=req.confidence, delta=req.delta, top=req.top)
        return json_safe(res.to_dict())

    def top(self, name: str, k: int, confidence: float) -> list[dict]:
        cap("k", k, self.limits.max_top)
        return self.work.run("the top functions", self._top, name, k, confidence)

    def _top(self, name: str, k: int, confidence: float) -> list[dict]:
        t = self.store.get(name)
        if t.n_samples == 0:
            return []
        return [e.to_dict() for e in top_estimates(t, k, confidence)]

    def submit(self, req: JobRequest, authorization: str | None) -> dict:
        self.authorize(authorization)
        name = self.store.check_name(req.table)
        cap("draws", req.draws, self.limits.max_draws, "ask for fewer draws")
        existing = self.work.run("reading the table", self.store.get, name, missing_ok=True)
        if req.spec is not None:
            spec = self.parse_spec(req.spec)
            if existing is not None and existing.spec_id != spec.spec_id:
                raise ApiError(409, f"table {name!r} holds spec {existing.spec_id}, not the spec given ({spec.spec_id}): "
                                    "leave out the spec to extend the table, or choose a new table name")
        elif existing is None:
            raise ApiError(404, f"no table named {name!r}: give a spec to create it")
        else:
            spec = existing.spec
        if spec.training is not None:
            raise ApiError(400, "the spec has a [training] section: the service samples prior draws only")
        initial = existing.n_samples if existing is not None else 0
        n = req.draws + (initial if req.add else 0)
        check_job(spec, n, self.limits)  # before anything of the size of the job is made
        todo = missing_blocks(existing or FrequencyTable.empty(spec), spec, n)
        answer = self.jobs.submit(name, str(self.store.path(name)), spec.to_dict(), n, initial,
                                  initial + len(todo) * spec.block_size)
        if "refused" in answer:
            raise ApiError(answer["refused"], answer["message"])
        return self._redact_job(answer)

    def _redact_job(self, answer: dict) -> dict:
        if answer.get("error"):
            answer["error"] = self.redact(answer["error"])
        return answer

    def cancel(self, job_id: str, authorization: str | None) -> dict:
        self.authorize(authorization)
        answer = self.jobs.cancel(job_id)
        if answer is None:
            raise ApiError(404, f"no job {job_id[:40]!r} on this server: GET /jobs lists them")
        return self._redact_job(answer)

    def job(self, job_id: str) -> dict:
        answer = self.jobs.status(job_id)
        if answer is None:
            raise ApiError(404, f"no job {job_id[:40]!r} on this server: GET /jobs lists them")
        return self._redact_job(answer)

    def list_jobs(self) -> list[dict]:
        return [self._redact_job(a) for a in self.jobs.list()]

    def gp_estimate(self, req: GPRequest) -> dict:
        if (req.spec is None) == (req.table is None):
            raise ApiError(400, "give exactly one of spec (a JSON spec) or table (a table name)")
        spec = self.parse_spec(req.spec) if req.spec is not None else self.store.get(req.table).spec
        try:
            from volume.gp.score import DEFAULT_SAMPLES, METHODS
        except ImportError as e:
            raise ApiError(501, f"GP estimates are not available on this server (volume.gp: {e})") from None
        if req.method not in METHODS:
            raise ApiError(400, f"method = {req.method!r}: use one of {', '.join(METHODS)}")
        if req.kernel not in ("analytic", "empirical"):
            raise ApiError(400, f"kernel = {req.kernel!r}: use 'analytic' (FCN, or CNN with pool avg/none; relu/erf) or 'empirical' (any spec)")
        if req.likelihood not in ("heaviside", "probit"):
            raise ApiError(400, f"likelihood = {req.likelihood!r}: use 'heaviside' or 'probit'")
        check_gp(spec, self.limits, samples=0 if req.method == "ep" else (req.samples or DEFAULT_SAMPLES),
                 kernel=req.kernel, kernel_samples=req.kernel_samples)
        return self.work.run("the GP estimate", self._gp_estimate, spec, req)

    def _gp_estimate(self, spec: ExperimentSpec, req: GPRequest) -> dict:
        from volume.gp.estimate import log_prior, resolve_labels
        from volume.inputs import load_inputs

        labels = resolve_labels(req.labels if isinstance(req.labels, str) else np.asarray(req.labels),
                                load_inputs(spec.inputs))
        return json_safe(log_prior(spec, labels, method=req.method, samples=req.samples, seed=req.seed,
                                likelihood=req.likelihood, kernel=req.kernel, kernel_samples=req.kernel_samples).to_dict())


    def logp(self, req: LogPRequest) -> list[dict]:
        """ln P(f) by volume.logp.log_p; the worst-case work is bounded before starting
        (``volume.limits.check_logp``) and the work runs within the time budget."""
        from volume.logp import METHODS
        from volume.nested import USER_FIELDS, NestedSettings

        if (req.spec is None) == (req.table is None):
            raise ApiError(400, "give exactly one of spec (a JSON spec) or table (a table name)")
        if req.method not in METHODS:
            raise ApiError(400, f"method {req.method!r} is unknown: use one of {', '.join(METHODS)}")
        if req.method == "count" and req.table is None:
            raise ApiError(400, "method 'count' needs a table: give table (a table name) instead of spec")
        table = self.store.get(req.table) if req.table is not None else None
        spec = self.parse_spec(req.spec) if req.spec is not None else table.spec
        settings = NestedSettings.from_mapping({k: getattr(req, k) for k in USER_FIELDS},
                                               max_levels=self.limits.max_logp_levels)
        check_logp(spec, self.limits, req.method, len(req.functions), settings)
        return self.work.run("the ln P(f) estimate", self._logp, spec, table, req, settings)

    def _logp(self, spec: ExperimentSpec, table, req: LogPRequest, settings) -> list[dict]:
        from volume.logp import log_p

        return json_safe([log_p(spec, f if isinstance(f, str) else np.asarray(f), req.method, table=table, seed=req.seed,
                             settings=settings).to_dict() for f in req.functions])


# ---- HTTP ---------------------------------------------------------------------------
class _Reject(ValueError):
    """A body that parses as JSON but that the service refuses (non-finite, too large, too deep)."""


def _strict_constant(name: str):
    raise _Reject(f"the body holds {name}: JSON numbers must be finite")


def _strict_int(text: str) -> int:
    if len(text.lstrip("-")) > JSON_INT_DIGITS:
        raise _Reject(f"the body holds the integer {text[:24]}...: integers must have at most {JSON_INT_DIGITS} digits")
    return int(text)


def _strict_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise _Reject(f"the body holds the number {text[:24]}, which is not a finite double")
    return x


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (iterative), stopping once above ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_json(body: bytes, max_depth: int) -> None:
    """Raise _Reject for a body that is JSON but not acceptable here; bodies that are not
    JSON at all are left to FastAPI (a 422 saying so)."""
    if not body.strip():
        return
    try:
        value = json.loads(body, parse_constant=_strict_constant, parse_int=_strict_int, parse_float=_strict_float)
    except _Reject:
        raise
    except RecursionError:
        raise _Reject(f"the body is nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError):
        return
    if _depth(value, max_depth) > max_depth:
        raise _Reject(f"the body is nested more than {max_depth} levels deep")


class RequestGuard:
    """ASGI middleware in front of the app: refuse a body above ``max_body_bytes`` (413, by
    Content-Length and while it streams), a body that does not arrive within
    ``body_seconds`` (408: a stalled client is dropped instead of holding a slot), and a JSON
    body with NaN/Infinity, numbers beyond 64 bits or nesting deeper than ``max_json_depth``
    (400). The body is read here once and replayed to the app."""

    def __init__(self, app, limits: Limits):
        self.app = app
        self.limits = limits

    async def _answer(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > limit):
            if length.isdigit():
                return await self._answer(send, 413, f"request body is larger than this server's limit of {limit} "
                                                     "bytes: split the request")
            return await self._answer(send, 400, "invalid Content-Length header")
        chunks: list[bytes] = []
        seen = 0
        deadline = time.monotonic() + self.limits.body_seconds
        more = scope.get("method", "GET") not in ("GET", "HEAD") or length not in (None, b"0")
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await self._answer(send, 408, f"the request body did not arrive within "
                                                     f"{self.limits.body_seconds:g} s: the connection is closed")
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                return await self._answer(send, 413, f"request body is larger than this server's limit of {limit} "
                                                     "bytes: split the request")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            check_json(body, self.limits.max_json_depth)
        except _Reject as e:
            return await self._answer(send, 400, str(e))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _validation_detail(exc: RequestValidationError) -> list[dict]:
    """FastAPI's field errors without the input values they echo (a value such as a huge
    string must not come back, and the answer must always encode)."""
    out = []
    try:
        errors = exc.errors()
    except Exception:  # noqa: BLE001
        errors = []
    for e in errors[:20]:
        loc = [x if isinstance(x, int) else _safe_text(x, 80) for x in (e.get("loc") or [])]
        out.append({"loc": loc, "msg": _safe_text(e.get("msg", ""), 300), "type": _safe_text(e.get("type", ""), 60)})
    return out or [{"loc": [], "msg": "the request is malformed", "type": "value_error"}]


def build_app(api: VolumeAPI) -> FastAPI:
    """The FastAPI app over ``api`` (used by the Serve ingress and, without Ray, by tests).
    Every handler's answer is JSON that always encodes; no exception leaves as a 500 page."""
    app = FastAPI(title="volume", version=__version__,
                  description="Monte-Carlo estimates of the prior P(f) over the functions neural networks compute, "
                              "from tables of sampled functions; sampling jobs on Ray.")
    app.add_middleware(RequestGuard, limits=api.limits)

    def answer(status: int, detail: Any) -> JSONResponse:
        try:
            return JSONResponse({"detail": detail}, status_code=status)
        except Exception:  # noqa: BLE001 (an error handler cannot fail)
            return JSONResponse({"detail": "the request failed"}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return answer(exc.status, api.redact(_safe_text(exc.message, 2000)))

    @app.exception_handler(VolumeError)
    async def _volume_error(request: Request, exc: VolumeError):
        return answer(getattr(exc, "status", 400), api.redact(_safe_text(exc, 2000)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return answer(422, _validation_detail(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return answer(exc.status_code, _safe_text(exc.detail, 500))

    @app.exception_handler(MemoryError)
    async def _memory_error(request: Request, exc: MemoryError):
        return answer(503, "the server ran short of memory for this request: ask for less, or retry later")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return answer(500, f"internal error ({type(exc).__name__}): please report it")

    app.get("/health", summary="service status")(api.health)
    app.get("/tables", summary="all tables: spec, N, distinct functions")(api.list_tables)
    app.get("/tables/{name}", summary="one table's details")(api.table_info)
    app.post("/tables/{name}/prior", summary="P(f) with counts and intervals for a batch of functions")(api.prior)
    app.post("/tables/{name}/posterior", summary="posterior on a training set")(api.posterior)

    @app.get("/tables/{name}/top", summary="the k most frequent functions")
    def top(name: str, k: int = Query(10, ge=1), confidence: float = Query(0.95, gt=0, lt=1)) -> list[dict]:
        return api.top(name, k, confidence)

    @app.post("/jobs", status_code=202, summary="sample into a table (creates or extends it)")
    def submit(req: JobRequest, authorization: str | None = Header(None)) -> dict:
        return api.submit(req, authorization)

    @app.delete("/jobs/{job_id}", summary="cancel a job (the draws it counted are saved)")
    def cancel(job_id: str, authorization: str | None = Header(None)) -> dict:
        return api.cancel(job_id, authorization)

    app.get("/jobs", summary="all jobs (finished ones expire)")(api.list_jobs)
    app.get("/jobs/{job_id}", summary="a job's progress")(api.job)
    app.post("/gp/estimate", summary="GP/EP estimate of log P(f)")(api.gp_estimate)
    app.post("/logp", summary="ln P(f) by counting, EP, the GP estimator or nested sampling")(api.logp)
    return app


# ---- Ray Serve ----------------------------------------------------------------------
def http_options(host: str, port: int, limits: Limits | None = None) -> dict:
    """Ray Serve's HTTP proxy options for ``serve.start``: bind ``host`` only, close idle
    keep-alive connections after ``keep_alive_s`` and end any request after
    ``proxy_request_seconds``."""
    limits = limits or Limits()
    return {"host": host, "port": port, "keep_alive_timeout_s": int(limits.keep_alive_s),
            "request_timeout_s": float(limits.proxy_request_seconds)}


def _bind_replica_grpc(host: str | None) -> None:
    """Ray Serve starts an inter-deployment gRPC server in every replica on '[::]:0', every
    interface of the machine. In the replica's process, before that server starts, make it
    bind ``host`` instead (a service asked to listen on loopback opens nothing outside it).
    ``host`` None (a cluster: replicas on other nodes must reach each other) leaves Ray's
    choice."""
    if host is None:
        return
    from ray.serve._private import replica

    original = getattr(replica.add_port_to_grpc_server, "__wrapped__", replica.add_port_to_grpc_server)
    where = f"[{host}]" if ":" in host else host

    def bound(server, address: str):
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = f"{where}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    bound.__wrapped__ = original
    replica.add_port_to_grpc_server = bound


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class JobRunner:
    """One replica: runs sampling jobs as Ray tasks and keeps their progress."""

    def __init__(self, limits: dict | None = None, checkpoint_seconds: float = 5.0, bind_host: str | None = None):
        _bind_replica_grpc(bind_host)
        self.jobs = LocalJobs(_ray_runner, checkpoint_seconds=checkpoint_seconds, limits=Limits.from_dict(limits))

    def submit(self, *args) -> dict:
        return self.jobs.submit(*args)

    def cancel(self, job_id: str) -> dict | None:
        return self.jobs.cancel(job_id)

    def status(self, job_id: str) -> dict | None:
        return self.jobs.status(job_id)

    def list(self) -> list[dict]:
        return self.jobs.list()


class _HandleJobs:
    """The LocalJobs interface over a DeploymentHandle to the JobRunner (called from the
    ingress's worker threads, where blocking on .result() is allowed)."""

    def __init__(self, handle):
        self.handle = handle

    def submit(self, *args) -> dict:
        return self.handle.submit.remote(*args).result()

    def cancel(self, job_id: str) -> dict | None:
        return self.handle.cancel.remote(job_id).result()

    def status(self, job_id: str) -> dict | None:
        return self.handle.status.remote(job_id).result()

    def list(self) -> list[dict]:
        return self.handle.list.remote().result()


INGRESS_MAX_ONGOING = 256  # requests one ingress replica holds at once (a stalled one for body_seconds at most)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_MAX_ONGOING,
                  max_queued_requests=4 * INGRESS_MAX_ONGOING)
@serve.ingress()
class VolumeIngress:
    """The HTTP ingress: the FastAPI app of :func:`build_app` over the tables directory."""

    def __init__(self, tables_dir: str, jobs_handle, token_sha256: str | None = None, limits: dict | None = None,
                 data_dir: str | None = None, bind_host: str | None = None):
        _bind_replica_grpc(bind_host)
        self.api = VolumeAPI(tables_dir, jobs=_HandleJobs(jobs_handle), token_sha256=token_sha256,
                             limits=Limits.from_dict(limits), data_dir=data_dir)

    def __serve_build_asgi_app__(self):
        return build_app(self.api)


def application(tables_dir: str | Path, *, token: str | None = None, limits: Limits | None = None,
                data_dir: str | Path | None = None, replicas: int = 1, checkpoint_seconds: float = 5.0,
                bind_host: str | None = None, max_ongoing_requests: int | None = None):
    """The Serve application (ingress + job runner) over ``tables_dir``. ``bind_host``: the
    address every server the application starts listens on (the replicas' gRPC ports; the
    HTTP proxy takes :func:`http_options`); None leaves Ray's default (all interfaces)."""
    from volume.errors import TableError

    limits = limits or Limits()
    store = TableStore(tables_dir)  # fail early on a missing directory
    for name in store.names():  # what a killed writer left behind: removed by whoever gets the table's lock
        with contextlib.suppress(TableError), table_lock(store.path(name)):
            pass  # (a table some running job holds keeps its temporaries: they are that job's)
    runner = JobRunner.bind(dataclasses.asdict(limits), checkpoint_seconds, bind_host)
    ingress = VolumeIngress.options(num_replicas=replicas)
    if max_ongoing_requests is not None:
        ingress = ingress.options(max_ongoing_requests=max_ongoing_requests, max_queued_requests=4 * max_ongoing_requests)
    return ingress.bind(str(store.root), runner, token_digest(token), dataclasses.asdict(limits),
                        None if data_dir is None else str(Path(data_dir).resolve()), bind_host)


def build(args: dict) -> Any:
    """Application builder for ``serve deploy`` (cluster/serve.yaml). ``args``: tables (dir),
    data_dir, replicas, checkpoint_seconds, limits (dict of :class:`volume.limits.Limits`
    fields), bind_host, and allow_anonymous_jobs. The token comes from VOLUME_TOKEN in the
    application's runtime_env; without one the builder refuses, unless allow_anonymous_jobs
    is true."""
    import os

    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not args.get("allow_anonymous_jobs", False):
        raise VolumeError(f"no {TOKEN_ENV} in the application's environment: set it in runtime_env.env_vars "
                          "(job submission must be authenticated), or set args.allow_anonymous_jobs: true")
    try:
        limits = Limits.from_dict(args.get("limits"))
    except (TypeError, VolumeError) as e:
        raise VolumeError(f"args.limits: {e}") from None
    return application(args["tables"], token=token, limits=limits, data_dir=args.get("data_dir"),
                       replicas=int(args.get("replicas", 1)),
                       checkpoint_seconds=float(args.get("checkpoint_seconds", 5.0)),
                       bind_host=args.get("bind_host"))
