"""What one request and one job may cost: the caps of the service, in one place.

Every endpoint's work is bounded before it starts, from the request alone, by a *cost
function* here that raises :class:`LimitExceeded` (HTTP 413, with the reason and the
fix); what still runs is bounded in time by the service's budget (``request_seconds``,
503 when it is spent). A new endpoint declares its bound by adding its caps to
:class:`Limits` and a ``check_*`` function below, and calls that function first thing.

Cost models (float32, the sampler's layout; benchmarks/RESULTS.md "Limits" has the
measured figures behind the defaults):

* a job of N draws in blocks of B on M inputs, P parameters per draw, widths w_l:
  blocks = ceil(N / B); a worker holds max(32, sub_batch) draws' parameters (the random
  stream is drawn in units of 32 draws, ``volume.models.UNIT``) and one sub-batch's
  activations, about 4 (32 P + s M sum_l w_l) bytes, plus B M label bytes; the table
  holds at most min(N, 2^M) distinct keys of ceil(M / 8) bytes and an 8-byte count;
  the work is N M sum_l fan_in_l fan_out_l multiply-adds;
* a GP estimate on M inputs through L hidden layers: the analytic kernel costs
  (L + 1) M^2 kernel steps and EP O(M^3) per sweep.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from volume.errors import VolumeError

UNIT = 32  # draws per unit of the random stream (volume.models.UNIT; kept here so that no torch is imported)


class LimitExceeded(VolumeError):
    """A request or job would cost more than this server allows (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class Limits:
    """Caps on what one request or one job may cost. Every field can be set with
    ``serve deploy`` (``args.limits``) or ``volume.service.application(limits=...)``."""

    # ---- one request
    max_body_bytes: int = 1 << 20  # request body
    max_json_depth: int = 32  # nesting of arrays/objects in a body
    max_functions: int = 4096  # functions in one P(f) batch
    max_top: int = 10_000  # k of top-k, top of a posterior
    request_seconds: float = 30.0  # time budget of one request's work: 503 after it
    max_busy_requests: int = 4  # requests whose work runs at once (overdue ones included): 503 beyond
    # ---- the GP endpoint
    max_gp_inputs: int = 2048  # inputs M of a GP estimate (EP is O(M^3))
    max_gp_depth: int = 64  # hidden layers L of a GP estimate
    max_gp_kernel_steps: int = 1 << 27  # (L + 1) M^2 analytic kernel steps
    max_gp_sample_work: int = 1 << 34  # samples x M^2 of a GP estimate's Monte-Carlo draws
    max_gp_kernel_work: int = 1 << 33  # networks x M^2 of an empirical kernel
    max_logp_functions: int = 16  # functions in one POST /logp
    max_logp_levels: int = 150  # nested levels: ln P below about -levels * ln(1/p0) is answered as a bound
    max_logp_work: float = 4e12  # multiply-adds of one POST /logp, worst case (volume.nested.work_bound)
    # ---- one job
    max_draws: int = 10**9  # draws one job may ask for
    max_blocks: int = 100_000  # blocks of a job (each is bookkeeping in the runner)
    max_block_labels: int = 1 << 26  # block_size x inputs of a spec (one block's labels)
    max_width: int = 4096  # widest layer (units or channels)
    max_worker_bytes: int = 1 << 30  # memory a worker needs to draw a block (cost model above)
    max_table_bytes: int = 2 << 30  # largest table the job can produce (distinct keys x (key bytes + 8)); also the
    # cap on the posterior counts of one pass by rejection (volume.posterior_sampling.memory_bound)
    max_job_macs: int = 10**14  # multiply-adds of the whole job
    max_active_jobs: int = 4
    max_block_retries: int = 3  # a block whose worker dies is retried this often, then the job fails
    # ---- the job list
    max_finished_jobs: int = 100  # finished jobs kept in GET /jobs (oldest dropped first)
    finished_job_ttl_s: float = 3600.0  # and for at most this long
    # ---- connections (the HTTP server; see volume.service.http_options)
    body_seconds: float = 10.0  # a request's body must arrive within this: 408 after it
    keep_alive_s: int = 5  # idle keep-alive connections are closed after this
    proxy_request_seconds: float = 120.0  # end-to-end limit of one request at the proxy

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise VolumeError(f"limits.{f.name} = {v!r} is invalid: give a positive number")

    @classmethod
    def from_dict(cls, d: dict | None) -> "Limits":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d or {}) - known)
        if unknown:
            raise VolumeError(f"limits: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**(d or {}))


def cap(what: str, value: int | float, limit: int | float, fix: str = "split the request") -> None:
    """Raise LimitExceeded when ``value`` is above ``limit``."""
    if value > limit:
        raise LimitExceeded(f"{what} = {value:,} is above this server's limit of {limit:,}: {fix}")


# ---- jobs ---------------------------------------------------------------------------------
_IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8)}


def input_shape(spec) -> tuple[int, ...]:
    """Shape of one input of ``spec``, without reading any data."""
    from volume.spec import BooleanCube

    if isinstance(spec.inputs, BooleanCube):
        return (spec.inputs.n,)
    return _IMAGE_SHAPES[spec.inputs.dataset]


def _layers(spec) -> list[tuple[str, int, int, int]]:
    """(kind, fan_in, fan_out, positions) per layer (``volume.layers``, no torch): positions =
    output pixels of a conv layer (1 for dense), the factor of its multiply-adds and activations
    per input."""
    from volume.layers import layer_shapes, walk

    shape = input_shape(spec)
    return [(layer.kind, layer.fan_in, layer.weight_shape[0], layer.positions(s))
            for layer, s in walk(layer_shapes(spec, shape), shape)]


@dataclass(frozen=True)
class JobCost:
    """What a job of ``draws`` draws of a spec will allocate and run (the cost model above)."""

    blocks: int
    inputs: int
    params_per_draw: int
    widest: int
    worker_bytes: int
    table_bytes: int
    macs: int


def job_cost(spec, draws: int) -> JobCost:
    layers = _layers(spec)
    m = spec.n_inputs
    params = sum(fi * fo + fo for _, fi, fo, _ in layers)
    acts = sum(fo * pos for _, _, fo, pos in layers)
    sub_batch = min(64, spec.block_size)
    worker = 4 * (max(UNIT, sub_batch) * params + sub_batch * m * acts) + spec.block_size * m
    from volume.keys import key_bytes as packed_bytes

    key_bytes = packed_bytes(m, spec.output.classes)
    distinct = draws if m >= 64 else min(draws, spec.output.classes ** m)
    return JobCost(blocks=math.ceil(draws / spec.block_size), inputs=m, params_per_draw=params,
                   widest=max(fo for _, _, fo, _ in layers), worker_bytes=worker,
                   table_bytes=distinct * (key_bytes + 8),
                   macs=draws * m * sum(fi * fo * pos for _, fi, fo, pos in layers))


def check_job(spec, draws: int, limits: Limits) -> JobCost:
    """Refuse a job that would cost more than ``limits`` allow; return its cost."""
    cap("draws", draws, limits.max_draws, "ask for fewer draws")
    cap("block_size x inputs of the spec", spec.block_size * spec.n_inputs, limits.max_block_labels,
        "use a smaller block_size")
    cost = job_cost(spec, draws)
    cap("blocks of the job (draws / block_size)", cost.blocks, limits.max_blocks, "use a larger block_size or fewer draws")
    cap("the widest layer of the spec", cost.widest, limits.max_width, "use narrower layers")
    cap("bytes a worker needs to draw a block (parameters of 32 draws and one sub-batch's activations)",
        cost.worker_bytes, limits.max_worker_bytes, "use a smaller network or fewer inputs")
    cap("bytes of the table the job can produce (distinct functions x key bytes)", cost.table_bytes,
        limits.max_table_bytes, "ask for fewer draws")
    cap("multiply-adds of the job (draws x inputs x weights)", cost.macs, limits.max_job_macs,
        "ask for fewer draws, or run it with `volume sample` on a cluster")
    return cost


# ---- the GP endpoint ----------------------------------------------------------------------
def check_gp(spec, limits: Limits, *, samples: int = 0, kernel: str = "analytic", kernel_samples: int = 0) -> None:
    """Refuse a GP estimate whose kernel, EP or Monte-Carlo draws would cost more than
    ``limits`` allow: M inputs, L hidden layers, (L + 1) M^2 S analytic kernel steps (S = 1 for
    an FCN; a CNN's largest number of pixel-pair moments per pair of inputs),
    ``samples`` x M^2 for the sequential sampler, ``kernel_samples`` x M^2 for an empirical
    kernel."""
    from volume.spec import FCN

    m = spec.n_inputs
    cap("inputs of the spec", m, limits.max_gp_inputs, "use fewer inputs (EP costs M^3)")
    arch = spec.architecture
    depth = len(arch.hidden) if isinstance(arch, FCN) else len(arch.channels) + len(arch.dense)
    cap("hidden layers of the spec", depth, limits.max_gp_depth, "use fewer layers")
    moments = 1  # per pair of inputs: a CNN's analytic kernel carries pixel pairs (volume.layers)
    if kernel == "analytic" and not isinstance(arch, FCN):
        from volume.layers import layer_shapes, pair_elements

        moments = pair_elements(layer_shapes(spec, input_shape(spec)), input_shape(spec))
    cap("kernel steps (layers + 1) x inputs^2 x moments per pair", (depth + 1) * m * m * moments,
        limits.max_gp_kernel_steps, "use fewer layers or fewer inputs" + (
            " (a CNN with pool 'none' carries only the pixel diagonal)" if moments > 1 else ""))
    cap("samples x inputs^2", samples * m * m, limits.max_gp_sample_work, "use fewer samples or method 'ep'")
    if kernel == "empirical":
        cap("networks x inputs^2 of the empirical kernel", kernel_samples * m * m, limits.max_gp_kernel_work,
            "use fewer kernel_samples")


# ---- the ln P(f) endpoint -------------------------------------------------------------------
def check_logp(spec, limits: Limits, method: str, n_functions: int, settings) -> None:
    """Refuse a POST /logp whose worst-case work is above ``limits``: the number of functions,
    the GP limits for 'ep'/'gp', and for 'auto'/'nested' the multiply-adds of
    ``volume.nested.work_bound`` (replicas x particles x levels x moves x tries x network)."""
    cap("functions", n_functions, limits.max_logp_functions, "send fewer functions per request")
    if method in ("ep", "gp"):
        check_gp(spec, limits)
    if method in ("auto", "nested"):
        from volume.inputs import load_inputs
        from volume.nested import work_bound

        inputs = load_inputs(spec.inputs)
        work = work_bound(spec, settings, inputs.shape, inputs.n_inputs) * n_functions
        cap("worst-case multiply-adds of nested sampling", int(work), int(limits.max_logp_work),
            "ask for fewer particles, replicas or functions" + (
                f", fewer moves, or kernel 'pcn' (kernel 'ess' counts up to max_shrink = {settings.max_shrink} "
                "evaluations per step, 'pcn' 1)" if settings.kernel == "ess" else ""))
        # one replica holds its particles, their directions and proposals with temporaries
        # (REPLICA_COPIES N D floats, measured for both kernels) and one forward chunk's
        # parameters and activations
        from volume.nested import REPLICA_COPIES

        layers = _layers(spec)
        params = sum(fi * fo + fo for _, fi, fo, _ in layers)
        acts = sum(fo * pos for _, _, fo, pos in layers)
        n, chunk = settings.particles, min(settings.batch, settings.particles)
        cap(f"bytes of one nested-sampling replica ({REPLICA_COPIES} x particles x parameters, one chunk's forward)",
            4 * (REPLICA_COPIES * n * params + chunk * (params + inputs.n_inputs * acts)), limits.max_worker_bytes,
            "ask for fewer particles, or use a smaller network")
