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
    GET  /jobs, /jobs/{id}            job progress
    POST /gp/estimate                 volume.gp.estimate.log_prior(spec, labels) (501 if not installed)
    POST /logp                        volume.logp.log_p(spec, f, method): count | ep | gp | nested, bounded work

A table is ``DIR/NAME.h5``; NAME matches ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (no path
separators, no '..'), so a request can never name a file outside DIR. Tables are cached
and reloaded when their file changes (mtime, size or inode: a job's checkpoint is an atomic
rename), so a table that a job extends is served without a restart.

Bad input never gives a 500: a malformed body is a 422 (FastAPI's validation), a bad function,
spec or index a 400 with the library's message (VolumeError), an unknown table or job a 404,
a spec that differs from the table's a 409, a body or batch above the limits a 413, a
missing or wrong token a 401/403. Job submission requires ``Authorization: Bearer TOKEN``
when a token is configured (environment variable VOLUME_TOKEN); only its SHA-256 is kept.

The application is two deployments: the ingress (:class:`VolumeIngress`, any number of
replicas, state-free apart from its table cache) and :class:`JobRunner` (one replica) that
runs sampling jobs as Ray tasks through :func:`volume.jobs.run_job` and keeps their
progress. The same FastAPI app runs without Ray over :class:`LocalJobs` (tests, debugging).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from volume import __version__
from volume.client import TOKEN_ENV, JobStatus
from volume.commands.core import parse_indices, resolve_target
from volume.errors import VolumeError
from volume.estimate import entropy_bits, good_turing_unseen, posterior, prior_estimates, top_estimates
from volume.keys import parse_function
from volume.runner import missing_blocks, run_local, table_lock
from volume.spec import ExperimentSpec, ImageSubset
from volume.table import FrequencyTable

TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (413 above them)."""

    max_body_bytes: int = 1 << 20  # request body
    max_functions: int = 4096  # functions in one P(f) batch
    max_top: int = 10_000  # k of top-k, top of a posterior
    max_draws: int = 10**9  # draws one job may ask for
    max_block_labels: int = 1 << 26  # block_size * n_inputs of a submitted spec (memory of one block)
    max_active_jobs: int = 4
    max_gp_inputs: int = 2048  # inputs of a GP estimate (EP is O(M^3))


class ApiError(Exception):
    """An answer other than 200 with a message (HTTP status, text)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def token_digest(token: str | None) -> str | None:
    return None if not token else hashlib.sha256(token.encode()).hexdigest()


def _plain(x: Any) -> Any:
    """JSON-able copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---- tables -------------------------------------------------------------------------
class TableStore:
    """The tables of one directory, loaded on first use and reloaded when the file changes."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise VolumeError(f"tables directory {str(root)!r} does not exist: create it or pass another --tables")
        self._cache: dict[str, tuple[tuple, FrequencyTable]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def check_name(name: str) -> str:
        name = name[:-3] if name.endswith(".h5") else name
        if not TABLE_NAME.match(name) or ".." in name:
            raise ApiError(400, f"table name {name[:80]!r} is invalid: use letters, digits, '_', '-', '.' "
                                "(no path separators, no '..'), e.g. 'boolean7'")
        return name

    def path(self, name: str) -> Path:
        return self.root / f"{self.check_name(name)}.h5"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.h5") if TABLE_NAME.match(p.stem) and ".." not in p.stem)

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


def _local_runner(spec: ExperimentSpec, n: int, path: str, *, on_block, checkpoint_seconds: float) -> FrequencyTable:
    with table_lock(path):
        return run_local(spec, n, path, on_block=on_block, checkpoint_seconds=checkpoint_seconds)


def _ray_runner(spec: ExperimentSpec, n: int, path: str, *, on_block, checkpoint_seconds: float) -> FrequencyTable:
    from volume.jobs import run_job

    return run_job(spec, n, path, on_block=on_block, checkpoint_seconds=checkpoint_seconds)


class LocalJobs:
    """Runs sampling jobs in background threads of this process and keeps their status.
    Answers are dicts: a job's status, or {"refused": HTTP status, "message": text}."""

    def __init__(self, runner: Runner = _local_runner, max_active: int = 4, checkpoint_seconds: float = 5.0):
        self.runner = runner
        self.max_active = max_active
        self.checkpoint_seconds = checkpoint_seconds
        self._jobs: dict[str, JobStatus] = {}
        self._lock = threading.Lock()

    def submit(self, table: str, path: str, spec: dict, n_draws: int, initial: int, target: int) -> dict:
        spec_obj = ExperimentSpec.from_dict(spec)
        with self._lock:
            active = [j for j in self._jobs.values() if j.active]
            if any(j.table == table for j in active):
                return {"refused": 409, "message": f"a job is already sampling table {table!r}: wait for it "
                                                 "(GET /jobs/ID) and submit again"}
            if len(active) >= self.max_active:
                return {"refused": 429, "message": f"{len(active)} jobs are running, the most this server allows: "
                                                 "submit again when one has finished"}
            job = JobStatus(id=uuid.uuid4().hex[:16], table=table, spec_id=spec_obj.spec_id, state="running",
                            draws_target=target, draws_done=initial, draws_initial=initial, submitted=time.time())
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job, spec_obj, n_draws, path), daemon=True,
                         name=f"volume-job-{job.id}").start()
        return self.status(job.id)

    def _run(self, job: JobStatus, spec: ExperimentSpec, n_draws: int, path: str) -> None:
        def on_block(draws: int) -> None:
            with self._lock:
                job.draws_done += draws

        try:
            table = self.runner(spec, n_draws, path, on_block=on_block, checkpoint_seconds=self.checkpoint_seconds)
            with self._lock:
                job.state, job.draws_done, job.n_distinct = "done", table.n_samples, table.n_distinct
        except Exception as e:  # reported through the job's status
            with self._lock:
                job.state, job.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            job.finished = time.time()

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
            ids = list(self._jobs)
        return [self.status(i) for i in ids]


# ---- requests -----------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriorRequest(_Body):
    functions: list[str] = Field(..., description="functions: '0'/'1' strings (one label per input) or hex keys")
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
    labels: str | list[int] = Field(..., description="the function: '0'/'1' string, hex key, or label list")
    spec: dict[str, Any] | None = None
    table: str | None = Field(None, description="instead of spec: use this table's spec")


class LogPRequest(_Body):
    functions: list[str | list[int]] = Field(..., min_length=1, description="functions: '0'/'1' strings, hex keys, "
                                                                            "target rules or label lists")
    spec: dict[str, Any] | None = None
    table: str | None = Field(None, description="instead of spec: this table's spec (and its counts for 'count'/'auto')")
    method: str = Field("auto", description="auto | count | ep | gp | nested (volume.logp.log_p)")
    seed: int = Field(0, ge=0)
    particles: int | None = Field(None, ge=2, description="nested: particles per replica")
    replicas: int | None = Field(None, ge=1, description="nested: independent replicas (the error bar)")
    p0: float | None = Field(None, gt=0, lt=1, description="nested: fraction kept per level")
    moves: int | None = Field(None, ge=1, description="nested: slice-sampling steps per particle per level")


@dataclasses.dataclass(frozen=True)
class LogPLimits:
    """Bounds on the work of one POST /logp, checked before any is done (413 above them)."""

    max_functions: int = 16
    max_levels: int = 150  # nested levels: ln P below about -max_levels * ln(1/p0) is answered as a bound
    max_work: float = 4e12  # multiply-adds, worst case over all functions (volume.nested.work_bound)


# ---- the API, free of HTTP and Ray ------------------------------------------------------
class VolumeAPI:
    """What each endpoint does; ``jobs`` is a LocalJobs or a handle to the JobRunner deployment."""

    def __init__(self, tables_dir: str | Path, *, jobs: Any = None, token_sha256: str | None = None,
                 limits: Limits | None = None, data_dir: str | Path | None = None):
        self.store = TableStore(tables_dir)
        self.jobs = jobs if jobs is not None else LocalJobs()
        self.token_sha256 = token_sha256
        self.limits = limits or Limits()
        self.data_dir = Path(data_dir).resolve() if data_dir else None

    # -- helpers
    def _cap(self, what: str, value: int, cap: int) -> None:
        if value > cap:
            raise ApiError(413, f"{what} = {value} is above this server's limit of {cap}: split the request")

    def authorize(self, authorization: str | None) -> None:
        if self.token_sha256 is None:
            return
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "job submission needs a token: send 'Authorization: Bearer TOKEN' "
                                f"(the client reads {TOKEN_ENV})")
        if not hmac.compare_digest(token_digest(authorization[7:].strip()) or "", self.token_sha256):
            raise ApiError(403, "the token is wrong")

    def parse_spec(self, d: dict) -> ExperimentSpec:
        try:
            spec = ExperimentSpec.from_dict(d)
        except VolumeError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ApiError(400, f"invalid spec: {e}") from None
        return self._localize(spec)

    def _localize(self, spec: ExperimentSpec) -> ExperimentSpec:
        """Image inputs are read only from inside the server's data directory."""
        if not isinstance(spec.inputs, ImageSubset) or spec.inputs.dataset == "digits":
            return spec
        if self.data_dir is None:
            raise ApiError(400, "this server has no data directory (volume serve --data-dir), so it cannot read "
                                "image inputs: use a Boolean or 'digits' spec")
        p = Path(spec.inputs.path)
        resolved = (p if p.is_absolute() else self.data_dir / p).resolve()
        if resolved != self.data_dir and self.data_dir not in resolved.parents:
            raise ApiError(400, f"spec field 'inputs.path' = {spec.inputs.path!r} is outside the server's data "
                                "directory: give a path relative to it (or '')")
        return spec.replace(inputs=dataclasses.replace(spec.inputs, path=str(resolved)))

    # -- endpoints
    def health(self) -> dict:
        return {"status": "ok", "version": __version__, "tables": len(self.store.names()),
                "jobs_need_token": self.token_sha256 is not None}

    def list_tables(self) -> list[dict]:
        out = []
        for name in self.store.names():
            try:
                t = self.store.get(name)
                out.append({"name": name, "spec_id": t.spec_id, "spec": t.spec.to_dict(), "n_samples": t.n_samples,
                            "n_distinct": t.n_distinct, "n_blocks": int(len(t.blocks))})
            except (VolumeError, ApiError) as e:  # a corrupt file does not hide the others
                out.append({"name": name, "error": str(e)})
        return out

    def table_info(self, name: str) -> dict:
        t = self.store.get(name)
        info = {"name": self.store.check_name(name), **t.info()}
        if t.n_samples:
            info["good_turing_unseen_mass"] = good_turing_unseen(t)
            info["entropy_bits"] = entropy_bits(t)
        return info

    def prior(self, name: str, req: PriorRequest) -> list[dict]:
        self._cap("number of functions", len(req.functions), self.limits.max_functions)
        t = self.store.get(name)
        if t.n_samples == 0:
            raise ApiError(409, f"table {name!r} is empty: sample into it first")
        return [e.to_dict() for e in prior_estimates(t, req.functions, req.confidence)]

    def posterior(self, name: str, req: PosteriorRequest) -> dict:
        self._cap("top", req.top, self.limits.max_top)
        t = self.store.get(name)
        idx = (parse_indices(req.train_indices, t.n_inputs) if isinstance(req.train_indices, str)
               else np.asarray(req.train_indices, dtype=np.int64))
        target = resolve_target(t, req.target) if req.target else None
        labels = req.train_labels
        if labels is None:
            if target is None:
                raise ApiError(400, "give train_labels, or a target that provides them")
            if idx.size == 0 or idx.min() < 0 or idx.max() >= t.n_inputs:
                raise ApiError(400, f"train_indices must be non-empty and lie in 0..{t.n_inputs - 1}")
            labels = target[idx]
        elif not isinstance(labels, str):
            labels = np.asarray(labels, dtype=np.int64)
        res = posterior(t, idx, labels, target, confidence=req.confidence, delta=req.delta, top=req.top)
        return _plain(res.to_dict())

    def top(self, name: str, k: int, confidence: float) -> list[dict]:
        self._cap("k", k, self.limits.max_top)
        t = self.store.get(name)
        if t.n_samples == 0:
            return []
        return [e.to_dict() for e in top_estimates(t, k, confidence)]

    def submit(self, req: JobRequest, authorization: str | None) -> dict:
        self.authorize(authorization)
        name = self.store.check_name(req.table)
        self._cap("draws", req.draws, self.limits.max_draws)
        existing = self.store.get(name, missing_ok=True)
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
        self._cap("block_size x inputs of the spec", spec.block_size * spec.n_inputs, self.limits.max_block_labels)
        initial = existing.n_samples if existing is not None else 0
        n = req.draws + (initial if req.add else 0)
        self._cap("draws", n, self.limits.max_draws)
        todo = missing_blocks(existing or FrequencyTable.empty(spec), spec, n)
        answer = self.jobs.submit(name, str(self.store.path(name)), spec.to_dict(), n, initial,
                                  initial + len(todo) * spec.block_size)
        if "refused" in answer:
            raise ApiError(answer["refused"], answer["message"])
        return answer

    def job(self, job_id: str) -> dict:
        answer = self.jobs.status(job_id)
        if answer is None:
            raise ApiError(404, f"no job {job_id[:40]!r} on this server: GET /jobs lists them")
        return answer

    def list_jobs(self) -> list[dict]:
        return self.jobs.list()

    def gp_estimate(self, req: GPRequest) -> dict:
        if (req.spec is None) == (req.table is None):
            raise ApiError(400, "give exactly one of spec (a JSON spec) or table (a table name)")
        spec = self.parse_spec(req.spec) if req.spec is not None else self.store.get(req.table).spec
        self._cap("inputs of the spec", spec.n_inputs, self.limits.max_gp_inputs)
        labels = parse_function(req.labels if isinstance(req.labels, str) else np.asarray(req.labels),
                                spec.n_inputs, spec.output.classes)
        try:
            from volume.gp.estimate import log_prior
        except ImportError as e:
            raise ApiError(501, f"GP estimates are not available on this server (volume.gp.estimate.log_prior: {e})") from None
        return _plain(log_prior(spec, labels).to_dict())


    def logp(self, req: LogPRequest) -> list[dict]:
        """ln P(f) by volume.logp.log_p; the worst-case work is bounded before starting."""
        from volume.logp import METHODS, log_p
        from volume.nested import NestedSettings, work_bound

        lim: LogPLimits = getattr(self, "logp_limits", LogPLimits())
        if (req.spec is None) == (req.table is None):
            raise ApiError(400, "give exactly one of spec (a JSON spec) or table (a table name)")
        if req.method not in METHODS:
            raise ApiError(400, f"method {req.method!r} is unknown: use one of {', '.join(METHODS)}")
        table = self.store.get(req.table) if req.table is not None else None
        spec = self.parse_spec(req.spec) if req.spec is not None else table.spec
        self._cap("functions", len(req.functions), lim.max_functions)
        if req.method in ("ep", "gp"):
            self._cap("inputs of the spec", spec.n_inputs, self.limits.max_gp_inputs)
        given = {k: getattr(req, k) for k in ("particles", "replicas", "p0", "moves") if getattr(req, k) is not None}
        settings = NestedSettings(**given, max_levels=lim.max_levels)
        if req.method in ("auto", "nested"):
            from volume.inputs import load_inputs

            inputs = load_inputs(spec.inputs)
            work = work_bound(spec, settings, inputs.shape, inputs.n_inputs) * len(req.functions)
            if work > lim.max_work:
                raise ApiError(413, f"this request may cost up to {work:.3g} multiply-adds (nested: replicas x particles "
                                    f"x levels x moves x tries x network), above this server's limit of "
                                    f"{lim.max_work:.3g}: ask for fewer particles, replicas or functions")
        if req.method == "count" and table is None:
            raise ApiError(400, "method 'count' needs a table: give table (a table name) instead of spec")
        out = []
        for f in req.functions:
            f = f if isinstance(f, str) else np.asarray(f)
            out.append(log_p(spec, f, req.method, table=table, seed=req.seed, settings=settings).to_dict())
        return _plain(out)


# ---- HTTP ---------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than this server's limit of {limit} bytes: split the request")


class BodyLimit:
    """ASGI middleware: refuse bodies above ``max_bytes`` (by Content-Length, and while
    streaming when there is none) with a 413."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            detail = BodyTooLarge(self.max_bytes).detail if length.isdigit() else "invalid Content-Length header"
            response = JSONResponse({"detail": detail}, status_code=413 if length.isdigit() else 400)
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, limited_receive, send)


def build_app(api: VolumeAPI) -> FastAPI:
    """The FastAPI app over ``api`` (used by the Serve ingress and, without Ray, by tests)."""
    app = FastAPI(title="volume", version=__version__,
                  description="Monte-Carlo estimates of the prior P(f) over the functions neural networks compute, "
                              "from tables of sampled functions; sampling jobs on Ray.")
    app.add_middleware(BodyLimit, max_bytes=api.limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(VolumeError)
    async def _volume_error(request: Request, exc: VolumeError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

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

    app.get("/jobs", summary="all jobs")(api.list_jobs)
    app.get("/jobs/{job_id}", summary="a job's progress")(api.job)
    app.post("/gp/estimate", summary="GP/EP estimate of log P(f)")(api.gp_estimate)
    app.post("/logp", summary="ln P(f) by counting, EP, the GP estimator or nested sampling")(api.logp)
    return app


# ---- Ray Serve ----------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class JobRunner:
    """One replica: runs sampling jobs as Ray tasks and keeps their progress."""

    def __init__(self, max_active: int = 4, checkpoint_seconds: float = 5.0):
        self.jobs = LocalJobs(_ray_runner, max_active, checkpoint_seconds)

    def submit(self, *args) -> dict:
        return self.jobs.submit(*args)

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

    def status(self, job_id: str) -> dict | None:
        return self.handle.status.remote(job_id).result()

    def list(self) -> list[dict]:
        return self.handle.list.remote().result()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class VolumeIngress:
    """The HTTP ingress: the FastAPI app of :func:`build_app` over the tables directory."""

    def __init__(self, tables_dir: str, jobs_handle, token_sha256: str | None = None, limits: dict | None = None,
                 data_dir: str | None = None):
        self.api = VolumeAPI(tables_dir, jobs=_HandleJobs(jobs_handle), token_sha256=token_sha256,
                             limits=Limits(**(limits or {})), data_dir=data_dir)

    def __serve_build_asgi_app__(self):
        return build_app(self.api)


def application(tables_dir: str | Path, *, token: str | None = None, limits: Limits | None = None,
                data_dir: str | Path | None = None, replicas: int = 1, checkpoint_seconds: float = 5.0):
    """The Serve application (ingress + job runner) over ``tables_dir``."""
    limits = limits or Limits()
    TableStore(tables_dir)  # fail early on a missing directory
    runner = JobRunner.bind(limits.max_active_jobs, checkpoint_seconds)
    return VolumeIngress.options(num_replicas=replicas).bind(
        str(Path(tables_dir).resolve()), runner, token_digest(token), dataclasses.asdict(limits),
        None if data_dir is None else str(Path(data_dir).resolve()))


def build(args: dict) -> Any:
    """Application builder for ``serve deploy`` (cluster/serve.yaml). ``args``: tables (dir),
    data_dir, replicas, checkpoint_seconds, limits (dict of :class:`Limits` fields), and
    allow_anonymous_jobs. The token comes from VOLUME_TOKEN in the application's
    runtime_env; without one the builder refuses, unless allow_anonymous_jobs is true."""
    import os

    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not args.get("allow_anonymous_jobs", False):
        raise VolumeError(f"no {TOKEN_ENV} in the application's environment: set it in runtime_env.env_vars "
                          "(job submission must be authenticated), or set args.allow_anonymous_jobs: true")
    try:
        limits = Limits(**(args.get("limits") or {}))
    except TypeError as e:
        raise VolumeError(f"args.limits: {e}; known fields: {', '.join(f.name for f in dataclasses.fields(Limits))}") from None
    return application(args["tables"], token=token, limits=limits, data_dir=args.get("data_dir"),
                       replicas=int(args.get("replicas", 1)),
                       checkpoint_seconds=float(args.get("checkpoint_seconds", 5.0)))

