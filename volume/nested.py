"""ln P(f) of the finite network: the prior mass of {theta : network(theta) computes f}, by
subset simulation (adaptive multilevel splitting) with preconditioned Crank-Nicolson moves
(default) or elliptical slice sampling moves.

**Standardised coordinates.** Every parameter the prior draws is a function of one standard
normal coordinate, eps ~ N(0, I_D) (D = number of drawn parameters; biases are not drawn when
sigma_b = 0): the Gaussian prior is theta = scale * eps, the uniform prior
U(-a, a) is theta = a (2 Phi(eps) - 1) = a erf(eps / sqrt 2) (Gaussian-CDF reparametrisation;
the unit-variance draw sqrt(3) erf(eps / sqrt 2) is then scaled by
:func:`volume.models.scale_params` exactly as the sampler's). So P(f) = P_{eps ~ N(0, I)}(A_f),
A_f = {eps : f_theta(eps) = f on the input set}, and the prior is exactly N(0, I).

**Level function.** With the signed output margins m_i = y_i z_i (y_i = +1 / -1 for label 1 / 0;
threshold output, label = 1[z > 0]) or m_i = z_{i, f_i} - max_{j != f_i} z_{i, j} (argmax output),
the total violation V = sum_i max(0, -m_i) is scaled by the size of the outputs, s = mean_i |z_i|
(argmax: the mean range max_j z_ij - min_j z_ij), and

    L(eps) = 0 where the network computes f (labels exactly as the sampler computes them),
    L(eps) = -max(V / s, TINY) < 0 elsewhere,

so the level set {L >= 0} is exactly A_f and L is continuous off a null set. The smallest margin
min_i m_i, the level function first tried, defines the same set but its intermediate levels were
measured to trap the slice sampler (on 'majority' of examples/boolean7.toml one replica ends at
ln P = -80, and -296 with the margin scaled by s, against -48 and -50 for V / s, whose 8-replica
estimate with ESS moves is -46.5 +- 1.7, near the GP's -45): V / s lets one input be wrong while the others stay right, and
is invariant under the positive rescalings that leave f unchanged (ReLU, sigma_b = 0).

**Inputs fixed by the prior.** An input whose outputs are the same for every theta (x = 0 with
sigma_b = 0: z = 0 exactly, label 0 always) is detected by evaluating ``FIXED_PROBES``
independent prior draws (a non-constant output repeats exactly with probability 0). If f
disagrees with the fixed label there, ln P = -inf with the reason; otherwise the input is
dropped from the margin. Likewise f is impossible (-inf) when it labels two identical inputs
differently, or, for a positively homogeneous network (ReLU, sigma_b = 0, any pooling),
two inputs on the same ray x' = c x, c > 0.

**Subset simulation** (Au & Beck 2001, Probabilistic Engineering Mechanics 16:263; in the
adaptive form of Cerou, Del Moral, Furon & Guyader 2012, Statistics and Computing 22:795, and
close to nested sampling, Skilling 2006, Bayesian Analysis 1:833, which removes one particle per
step). N particles are drawn from the prior. At each level k, if at least p0 N particles
compute f, or the level would reach 0, stop with the last factor p_K = #{f_theta = f} / N.
Otherwise the threshold c_k is the K-th smallest L (K = N - round(p0 N) particles below it), the
particles with L <= c_k are replaced by copies of uniformly chosen survivors, the factor is
p_k = #{L > c_k} / N, and every particle makes ``moves`` MCMC steps that leave N(0, I)
restricted to {L > c_k} invariant (c_k < 0 always: L <= 0, = 0 only on A_f). The estimate is

    ln P_hat = sum_k ln p_k.

With kernels fixed in advance and invariant for each level's restricted prior, exp(ln P_hat)
is unbiased for fixed levels whatever the mixing (the Feynman-Kac normalising constant; Cerou
et al. 2012); the adaptive levels and the pCN step adapted from earlier levels add biases that
vanish as N grows. Poor mixing shows mostly as variance (measured bias: RESULTS.md, "Issue 10").

**Preconditioned Crank-Nicolson moves** (default; "adaptive conditional sampling",
Papaioannou, Betz, Zwirglmaier & Straub 2015, Probabilistic Engineering Mechanics 41:89):
propose eps' = sqrt(1 - s^2) eps + s nu, nu ~ N(0, I), and accept iff L(eps') > c. The
proposal is reversible for N(0, I), so the step is reversible for N(0, I) restricted to
{L > c}; it costs one network evaluation. The step size s is fixed within a level and
adapted between levels towards the acceptance rate ``target_accept``:
s_{k+1} = min(1, s_k exp(a_k - target_accept)), a_k the acceptance rate of level k (s_0 =
``step0``). Measured on 'majority' of examples/boolean7.toml (benchmarks/RESULTS.md, "Issue
10"): s falls to ~0.01 by the last level at acceptance ~0.34, and replica variance x CPU
seconds is 4-8x smaller than with ESS moves, which need ~8.6 evaluations per step at the deep
levels; more moves or particles per replica did not pay, more replicas do.

**Elliptical slice sampling** (``kernel = "ess"``; Murray, Adams & MacKay 2010, AISTATS, with the constraint
1[L > c] as likelihood): nu ~ N(0, I), t ~ U(0, 2 pi), bracket [t - 2 pi, t]; propose
eps cos t + nu sin t; accept if L > c, else shrink the bracket towards 0 at t and draw t again
in it. The ellipse passes through eps at t = 0, so a step ends after finitely many tries;
after ``max_shrink`` tries the particle stays where it is (the truncated kernel is still
reversible: every path of <= max_shrink tries has the same probability both ways).

**Error bar.** R independent replicas (replica r draws from a generator seeded by
SeedSequence([seed, r])) give l_1..l_R. The replica estimate of P, exp(l_r), is close to
unbiased (Cerou et al. 2012), so E[l_r] ~ ln P - s^2 / 2 with s^2 = Var(l_r); the combined
estimate is the log-normal mean

    ln P_hat = mean(l) + s^2 / 2,     SE^2 = s^2 / R + s^4 / (2 (R - 1)),

s^2 the sample variance of l (the second term is the uncertainty of the s^2 / 2 correction).
Where the replicas spread by more than MAX_REPLICA_SD = 2 nats (heavy-tailed replicas of a very
rare function at too few particles), R values cannot support the log-normal correction, and the
estimate falls back visibly (``reason``) to ln of the replicas' mean probability, with the same
wide SE. That SE was checked over repeated seeds against a reference (benchmarks/nested_fallback.py,
RESULTS.md "Issue 10"): at replica sd ~2 to ~4 nats (two networks) the fallback estimates spread
by 0.33-0.43 of it, and their bias (ln of the mean of R heavy-tailed terms is low: -2.2 nats at
sd ~4) stays within it (rms z 0.3-1.0): conservative (on exactly log-normal replicas of sd 4 it
under-covers, rms z 1.7; the measured replicas have a lighter upper tail). In the same runs the
estimates whose R replicas happened to spread by less than 2 nats were low with too small an SE
(replicas that missed the upper tail; rms z 1.7-4.1): a spread near 2 nats means too few
particles, whichever branch the estimate took.
The bias and the variance at the default settings are measured against exact and counted
references in benchmarks/nested_validation.py (benchmarks/RESULTS.md, "Issue 10").

**Diagnostics.** pCN reports its acceptance rate (mean over levels and replicas), the last
level's (mean over replicas) and the last level's step; ESS its tries per step and the fraction
of steps that ran out of tries (each None for the other kernel). A replica whose last level
accepted fewer than MIN_ACCEPTANCE = 5% of its pCN proposals left its particles there as copies
of a few survivors: the estimate keeps its value and says so in ``reason`` (:func:`stuck_chains`)
and in ``flags`` ('pcn-stuck', beside 'spread-fallback', 'few-particles' and 'not-converged').

**Determinism.** A replica's random numbers are drawn in a fixed order from its own generator,
whatever the evaluation chunk size (``batch``); replicas run in process or as Ray tasks
(``map_fn=volume.jobs.ray_map``) with the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np
import torch

from volume.errors import VolumeError
from volume.inputs import InputSet, load_inputs
from volume.models import Layer, forward, labels_from_outputs, layer_shapes, scale_params, stream_tensors
from volume.spec import ExperimentSpec

TINY = 1e-30
"""Smallest violation of a network that does not compute f (so that L < 0 off f exactly)."""

FIXED_PROBES = 8
"""Prior draws used to find the inputs whose output the prior fixes."""

KERNELS = ("pcn", "ess")
"""MCMC moves within a level: elliptical slice sampling, or preconditioned Crank-Nicolson."""

STEP_MIN = 1e-4
"""Smallest pCN step size the adaptation may reach."""

MapFn = Callable[[Callable[[Any], Any], list], list]


class NestedError(VolumeError):
    """Bad settings for the nested estimator."""


MAX_SETTING = 2**31 - 1
"""Largest value of an integer setting: far above any run's (a run's cost is bounded separately,
``work_bound`` and the service's limits), low enough that every cost computed from it is a finite
float (10**300 particles used to overflow the work bound into a 500)."""


@dataclass(frozen=True)
class NestedSettings:
    """Settings of the estimator (defaults chosen by measurement, benchmarks/RESULTS.md "Issue 10").

    particles: N per replica; replicas: R; p0: fraction of particles kept per level;
    moves: MCMC steps per particle per level; kernel: "pcn" (preconditioned Crank-Nicolson,
    one evaluation per step) or "ess" (elliptical slice sampling); target_accept, step0: the
    pCN acceptance rate the step size is adapted to, and the first level's step size;
    max_shrink: tries per ESS step; max_levels: levels before giving up (then ``converged``
    is False); batch: particles per forward call (memory and speed only, never the result)."""

    particles: int = 200
    replicas: int = 8
    p0: float = 0.5
    moves: int = 10
    max_shrink: int = 40
    max_levels: int = 2000
    batch: int = 256
    kernel: str = "pcn"
    target_accept: float = 0.4
    step0: float = 0.5

    def __post_init__(self) -> None:
        for name in ("particles", "replicas", "moves", "max_shrink", "max_levels", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SETTING:
                raise NestedError(f"{name} = {v!r}: give an integer in 1..{MAX_SETTING:,}")
        for name in ("p0", "target_accept", "step0"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise NestedError(f"{name} = {v!r}: give a number")
        if self.kernel not in KERNELS:
            raise NestedError(f"kernel = {self.kernel!r}: give one of {', '.join(KERNELS)}")
        if not (isinstance(self.target_accept, (int, float)) and 0.0 < self.target_accept < 1.0):
            raise NestedError(f"target_accept = {self.target_accept!r}: give an acceptance rate strictly between 0 and 1 (e.g. 0.4)")
        if not (isinstance(self.step0, (int, float)) and 0.0 < self.step0 <= 1.0):
            raise NestedError(f"step0 = {self.step0!r}: give the first pCN step size, in (0, 1] (e.g. 0.5)")
        if not (isinstance(self.p0, (int, float)) and 0.0 < self.p0 < 1.0):
            raise NestedError(f"p0 = {self.p0!r}: give the fraction kept per level, strictly between 0 and 1 (e.g. 0.5)")
        if not 1 <= round(self.p0 * self.particles) < self.particles:
            raise NestedError(f"p0 * particles = {self.p0 * self.particles:g}: keep at least 1 and fewer than all "
                              "particles per level (more particles, or p0 nearer 0.5)")

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any] | None = None, *, where: str = "", **fixed: Any) -> NestedSettings:
        """The settings from ``given`` -- a command line's flags, a request's fields, a config
        table -- the one place every front end (``volume logp``, ``POST /logp``, experiment
        configs, the benchmarks) builds and validates them. Keys whose value is None keep their
        defaults; ``fixed`` (e.g. a server's ``max_levels``) overrides ``given``. An unknown key or
        a bad value raises a one-line NestedError naming the field (prefixed by ``where``, e.g.
        'systems[0].nested.') and the fix."""
        if given is not None and not isinstance(given, Mapping):
            raise NestedError(f"{where or 'nested settings'}: give a table of settings ({', '.join(SETTINGS_FIELDS)}), "
                              f"not {type(given).__name__}")
        kw = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(str(k) for k in kw if k not in SETTINGS_FIELDS)
        if unknown:
            raise NestedError(f"{where}{unknown[0]} is not a nested-sampling setting: use {', '.join(SETTINGS_FIELDS)}")
        try:
            return cls(**{**kw, **fixed})
        except NestedError as e:
            raise NestedError(f"{where}{e}") from None


SETTINGS_FIELDS = tuple(f.name for f in fields(NestedSettings))
USER_FIELDS = ("particles", "replicas", "p0", "moves", "kernel")
"""The settings a user sets from the command line (``volume logp --particles ...``) and a POST
/logp request; the rest keep their defaults there (max_levels is the server's on the service)."""
"""The names :meth:`NestedSettings.from_mapping` takes."""


# ---- the level function --------------------------------------------------------------
class Margin:
    """L(eps) for a function ``labels`` (M,) on ``inputs``, and the exact label match.

    ``impossible`` is a reason string when f has prior mass 0 (see the module docstring),
    else None; ``active`` are the inputs kept in the margin."""

    def __init__(self, spec: ExperimentSpec, inputs: InputSet, labels: np.ndarray, batch: int = 64,
                 dtype: torch.dtype = torch.float32):
        self.spec = spec
        self.batch = batch
        self.dtype = dtype
        self.layers: list[Layer] = layer_shapes(spec, inputs.shape)
        self.shapes = [tuple(t.shape[1:]) for t in stream_tensors(spec, self.layers, 1)]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.dim = sum(self.sizes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.x_all = torch.as_tensor(inputs.x, dtype=dtype)
        self.impossible: str | None = None
        self.active = self._active_inputs(inputs)
        self.x = self.x_all[torch.as_tensor(self.active)]
        self.target = torch.as_tensor(self.labels[self.active])

    # -- parameters
    def params(self, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standard normal coordinates (n, D) -> the named parameters of the prior."""
        tensors, off = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            t = eps[:, off:off + size].reshape(eps.shape[0], *shape)
            if self.spec.prior.kind == "uniform":
                t = math.sqrt(3.0) * torch.erf(t / math.sqrt(2.0))
            tensors.append(t)
            off += size
        return scale_params(self.spec, self.layers, tensors)

    def outputs(self, eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = [forward(self.spec, self.layers, self.params(eps[i:i + self.batch]), x)
               for i in range(0, eps.shape[0], self.batch)]
        return torch.cat(out) if len(out) > 1 else out[0]

    def __call__(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L (n,), computes-f (n,) bool) for n points: L = 0 exactly where the network computes
        f, else -max(V / s, TINY) < 0 (module docstring)."""
        with torch.no_grad():
            z = self.outputs(eps, self.x)
            if self.spec.output.kind == "threshold":
                z0 = z[..., 0]
                m = z0 * (self.target.to(z.dtype) * 2 - 1)
                scale = z0.abs().mean(dim=1)
            else:
                tgt = self.target.view(1, -1, 1).expand(z.shape[0], -1, 1)
                m = z.gather(2, tgt)[..., 0] - z.scatter(2, tgt, -math.inf).amax(dim=2)
                scale = (z.amax(dim=2) - z.amin(dim=2)).mean(dim=1)
            match = (labels_from_outputs(self.spec, z).to(torch.int64) == self.target).all(dim=1)
            violation = torch.relu(-m).sum(dim=1) / scale.clamp_min(TINY)
            level = torch.where(match, torch.zeros_like(violation), -violation.clamp_min(TINY))
            return level, match

    # -- exact handling of inputs the prior fixes
    def _active_inputs(self, inputs: InputSet) -> np.ndarray:
        gen = torch.Generator().manual_seed(0x5EED)
        probe = torch.randn(FIXED_PROBES, self.dim, generator=gen, dtype=self.dtype)
        with torch.no_grad():
            z = self.outputs(probe, self.x_all)  # (P, M, units)
        fixed = (z == z[:1]).all(dim=2).all(dim=0).numpy()
        fixed_labels = labels_from_outputs(self.spec, z[:1])[0].numpy().astype(np.int64)
        bad = np.flatnonzero(fixed & (fixed_labels != self.labels))
        if bad.size:
            i = int(bad[0])
            self.impossible = (f"input {i} has an output fixed by the prior (label {fixed_labels[i]} for every "
                               f"parameter, e.g. x = 0 with sigma_b = 0) but f labels it {self.labels[i]}")
            return np.flatnonzero(~fixed)
        self.impossible = self._conflict(inputs, ~fixed)
        return np.flatnonzero(~fixed)

    def _conflict(self, inputs: InputSet, free: np.ndarray) -> str | None:
        """Why f is impossible by a symmetry of every network of the spec, or None: identical
        inputs with different labels; for a positively homogeneous network (ReLU, sigma_b = 0)
        inputs on one ray x' = c x, c > 0, with different labels; for an odd network (tanh or
        erf, sigma_b = 0, no max pooling) with a threshold output, x' = -x with equal labels."""
        spec = self.spec
        x = inputs.flat.astype(np.float64)
        act, unbiased = spec.architecture.activation, spec.prior.sigma_b == 0
        homogeneous = act == "relu" and unbiased
        odd = (act in ("tanh", "erf") and unbiased and spec.output.kind == "threshold"
               and getattr(spec.architecture, "pool", "none") != "max")
        if homogeneous:
            norm = np.linalg.norm(x, axis=1, keepdims=True)
            x = np.round(x / np.where(norm > 0, norm, 1), 12) + 0.0
        seen: dict[bytes, int] = {}
        for i in np.flatnonzero(free):
            j = seen.setdefault(x[i].tobytes(), int(i))
            if self.labels[j] != self.labels[i]:
                same = "on the same ray x' = c x (ReLU, sigma_b = 0)" if homogeneous else "identical"
                return f"inputs {j} and {int(i)} are {same}, so every network gives them one label, but f labels them differently"
            if odd:
                j = seen.get((-x[i] + 0.0).tobytes())
                if j is not None and self.labels[j] == self.labels[i]:
                    return (f"inputs {j} and {int(i)} are x and -x and the network is odd (tanh/erf, sigma_b = 0), "
                            "so their outputs have opposite signs, but f gives them the same label")
        return None


# ---- one replica ----------------------------------------------------------------------
@dataclass
class ReplicaResult:
    log_p: float
    levels: int
    converged: bool
    reason: str | None
    evaluations: int  # forward evaluations of one particle
    shrink_mean: float | None  # ESS: tries per step, mean (None under pCN)
    stuck_fraction: float | None  # ESS: steps that hit max_shrink (None under pCN)
    seconds: float
    thresholds: list[float] = field(default_factory=list)
    acceptance: float | None = None  # pCN: accepted fraction of proposals, mean over levels (None under ESS)
    acceptance_last: float | None = None  # pCN: the last level's accepted fraction
    last_step: float | None = None  # pCN: the step size the last level moved with


def _ess_step(margin: Margin, eps: torch.Tensor, L: torch.Tensor, match: torch.Tensor, c: float,
              gen: torch.Generator, max_shrink: int) -> tuple[int, int, int]:
    """One elliptical slice sampling step of every particle within {L > c}, in place.
    Returns (evaluations, tries, steps that ran out of tries)."""
    n = eps.shape[0]
    nu = torch.randn(eps.shape, generator=gen, dtype=eps.dtype)
    t = torch.rand(n, generator=gen, dtype=torch.float64) * (2 * math.pi)
    lo, hi = t - 2 * math.pi, t.clone()
    pending = torch.arange(n)
    evals = 0
    for _ in range(max_shrink):
        tp = t[pending]
        prop = (eps[pending] * torch.cos(tp).to(eps.dtype)[:, None]
                + nu[pending] * torch.sin(tp).to(eps.dtype)[:, None])
        lp, mp = margin(prop)
        evals += len(pending)
        ok = lp > c
        acc = pending[ok]
        eps[acc], L[acc], match[acc] = prop[ok], lp[ok], mp[ok]
        rej = pending[~ok]
        if len(rej) == 0:
            return evals, evals, 0
        neg = t[rej] < 0
        lo[rej] = torch.where(neg, t[rej], lo[rej])
        hi[rej] = torch.where(neg, hi[rej], t[rej])
        t[rej] = lo[rej] + torch.rand(len(rej), generator=gen, dtype=torch.float64) * (hi[rej] - lo[rej])
        pending = rej
    return evals, evals, len(pending)


def _pcn_step(margin: Margin, eps: torch.Tensor, L: torch.Tensor, match: torch.Tensor, c: float,
              gen: torch.Generator, step: float) -> int:
    """One preconditioned Crank-Nicolson step of every particle within {L > c}, in place:
    eps' = sqrt(1 - step^2) eps + step nu, nu ~ N(0, I), accepted iff L(eps') > c (reversible
    for N(0, I), hence for N(0, I) restricted to {L > c}). Returns the number accepted."""
    nu = torch.randn(eps.shape, generator=gen, dtype=eps.dtype)
    prop = eps * math.sqrt(1.0 - step * step) + nu * step
    lp, mp = margin(prop)
    ok = lp > c
    eps[ok], L[ok], match[ok] = prop[ok], lp[ok], mp[ok]
    return int(ok.sum())


def replica_generator(seed: int, replica: int) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, replica]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


def subset_simulation(margin: Margin, settings: NestedSettings, gen: torch.Generator) -> ReplicaResult:
    """One replica: ln P_hat = sum_k ln p_k (module docstring)."""
    t0 = time.perf_counter()
    n = settings.particles
    keep = round(settings.p0 * n)
    eps = torch.randn(n, margin.dim, generator=gen, dtype=margin.dtype)
    L, match = margin(eps)
    evals, tries, steps, stuck = n, 0, 0, 0
    step, accepted = settings.step0, 0
    acc_last, step_last = None, None  # pCN: the last level that moved
    log_p, thresholds = 0.0, []
    converged, reason = False, None
    for level in range(settings.max_levels + 1):
        n_match = int(match.sum())
        c = float(torch.kthvalue(L, n - keep).values)
        if n_match >= keep or c >= 0:  # c = 0 means at least `keep` particles compute f
            if n_match == 0:
                reason = "no particle computes f at the last level (ties at the margin 0)"
                log_p = -math.inf
            else:
                log_p += math.log(n_match / n)
                converged = True
            break
        if level == settings.max_levels:
            reason = (f"stopped after max_levels = {settings.max_levels} levels at margin {c:.3g} < 0; "
                      f"ln P(f) < {log_p:.4g} (the mass of the last level)")
            break
        alive = L > c
        n_alive = int(alive.sum())
        if n_alive == 0:
            reason = f"all particles tie at margin {c:.3g}: the level cannot rise (f may have prior mass 0)"
            break
        log_p += math.log(n_alive / n)
        thresholds.append(c)
        survivors = torch.nonzero(alive)[:, 0]
        dead = torch.nonzero(~alive)[:, 0]
        pick = survivors[torch.randint(0, n_alive, (len(dead),), generator=gen)]
        eps[dead], L[dead], match[dead] = eps[pick], L[pick], match[pick]
        if settings.kernel == "pcn":
            acc = sum(_pcn_step(margin, eps, L, match, c, gen, step) for _ in range(settings.moves))
            evals += n * settings.moves
            steps += n * settings.moves
            accepted += acc
            acc_last, step_last = acc / (n * settings.moves), step
            # the next level's step from this level's acceptance rate (fixed within a level)
            step = min(1.0, max(STEP_MIN, step * math.exp(acc_last - settings.target_accept)))
            continue
        for _ in range(settings.moves):
            e, tr, st = _ess_step(margin, eps, L, match, c, gen, settings.max_shrink)
            evals += e
            tries += tr
            stuck += st
            steps += n
    if settings.kernel == "pcn":  # every level makes n * moves proposals: the overall rate is the mean over levels
        kernel_diag = dict(shrink_mean=None, stuck_fraction=None, acceptance=accepted / steps if steps else None,
                           acceptance_last=acc_last, last_step=step_last)
    else:
        kernel_diag = dict(shrink_mean=tries / steps if steps else None, stuck_fraction=stuck / steps if steps else None)
    return ReplicaResult(log_p=log_p, levels=len(thresholds), converged=converged, reason=reason, evaluations=evals,
                         seconds=time.perf_counter() - t0, thresholds=thresholds, **kernel_diag)


class ReplicaTask:
    """Picklable ``replica -> ReplicaResult`` for one (spec, f, settings, seed): the unit that
    runs in process or as a Ray task."""

    def __init__(self, spec: ExperimentSpec, labels: np.ndarray, settings: NestedSettings, seed: int):
        self.spec, self.labels, self.settings, self.seed = spec, np.asarray(labels), settings, seed

    def __call__(self, replica: int) -> ReplicaResult:
        margin = Margin(self.spec, load_inputs(self.spec.inputs), self.labels, self.settings.batch)
        return subset_simulation(margin, self.settings, replica_generator(self.seed, replica))


def macs_per_evaluation(spec: ExperimentSpec, input_shape: tuple[int, ...], n_inputs: int) -> int:
    """Multiply-adds of one network on ``n_inputs`` inputs (dense: weights; conv: weights x positions)."""
    from volume.layers import walk

    layers = layer_shapes(spec, input_shape)
    return n_inputs * sum(math.prod(layer.weight_shape) * layer.positions(shape) for layer, shape in walk(layers, input_shape))


REPLICA_COPIES = 6
"""Copies of the particles (N x D floats) one replica holds at its peak, for the memory bound of
``POST /logp`` (volume.limits.check_logp): eps and the directions nu, and the proposal with its
temporaries (pCN: eps sqrt(1 - s^2), nu s and their sum; ESS: the pending rows of eps and nu,
their products and sum), and the copies of resampled survivors. Measured peak RSS above the
process's baseline (benchmarks/nested_memory.py: 1-700-700-1 ReLU, 2 inputs, N = 100, batch 16
and 1000; RESULTS.md "Issue 10"): 4.9 to 5.5 N D floats with either kernel, forward chunk
included, varying between runs; rounded up to 6, the forward chunk counted on top. ESS holds the
same arrays as pCN; its extra cost is evaluations (:func:`work_bound`)."""


def work_bound(spec: ExperimentSpec, settings: NestedSettings, input_shape: tuple[int, ...], n_inputs: int) -> float:
    """Most multiply-adds one estimate can cost: every replica's particles evaluated once, then at
    most ``max_levels`` levels of ``moves`` steps (pCN: one evaluation; ESS: at most ``max_shrink``)."""
    tries = settings.max_shrink if settings.kernel == "ess" else 1
    evals = settings.replicas * settings.particles * (1 + settings.max_levels * settings.moves * tries)
    return float(evals) * macs_per_evaluation(spec, input_shape, n_inputs)


# ---- replicas combined ----------------------------------------------------------------
@dataclass
class NestedResult:
    """ln P(f) by subset simulation: ``log_p`` (-inf when f is impossible), ``stderr`` (None
    with one replica), the replica values and diagnostics."""

    log_p: float
    stderr: float | None
    converged: bool
    reason: str | None
    replicas: list[float]
    mean_replica: float | None
    replica_sd: float | None
    settings: dict
    levels_mean: float
    evaluations: int
    shrink_mean: float | None  # ESS: tries per step (None under pCN)
    stuck_fraction: float | None  # ESS: steps that ran out of tries (None under pCN)
    seconds: float
    n_active_inputs: int
    n_fixed_inputs: int
    n_params: int
    acceptance: float | None = None  # pCN: accepted fraction of proposals, mean over levels and replicas
    acceptance_last: float | None = None  # pCN: the last level's accepted fraction, mean over replicas
    last_step: float | None = None  # pCN: the step size of the last level, mean over replicas
    stuck_replicas: int | None = None  # pCN: replicas whose last level accepted < MIN_ACCEPTANCE (stuck_chains)
    splitting_sd: float | None = None  # ideal splitting's replica sd for these levels and particles (few_particles)

    @property
    def flags(self) -> tuple[str, ...]:
        """Short tags of what ``reason`` says is wrong, for tables: 'not-converged' (an upper
        bound), 'spread-fallback' (replica sd > MAX_REPLICA_SD), 'pcn-stuck' (stuck_chains),
        'few-particles' (splitting_sd > MAX_SPLITTING_SD, few_particles)."""
        return tuple(tag for tag, on in (("not-converged", not self.converged),
                                          ("spread-fallback", self.replica_sd is not None
                                           and self.replica_sd > MAX_REPLICA_SD),
                                          ("pcn-stuck", bool(self.stuck_replicas)),
                                          ("few-particles", self.splitting_sd is not None
                                           and self.splitting_sd > MAX_SPLITTING_SD)) if on)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = list(self.flags)
        for k in ("log_p", "stderr", "mean_replica", "replica_sd"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        d["replicas"] = [v if math.isfinite(v) else None for v in d["replicas"]]
        return d


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


MIN_ACCEPTANCE = 0.05
"""pCN acceptance rate at a replica's last level below which its chains count as stuck (the
step adapts towards ``target_accept`` = 0.4; measured ~0.34 at the last level of 'majority',
benchmarks/RESULTS.md "Issue 10"): see :func:`stuck_chains`."""


def stuck_chains(results: list[ReplicaResult]) -> str | None:
    """The diagnostic failure of pCN moves, or None: a replica whose last level accepted fewer
    than :data:`MIN_ACCEPTANCE` of its proposals barely moved its particles there, so its last
    factors count copies of a few survivors (its value, and the spread of the replicas, are not
    to be trusted; the unbiasedness argument holds, the variance is not what the SE says)."""
    rates = [r.acceptance_last for r in results if r.acceptance_last is not None]
    low = [a for a in rates if a < MIN_ACCEPTANCE]
    if not low:
        return None
    return (f"pCN chains stuck: {len(low)} of {len(rates)} replicas accepted < {MIN_ACCEPTANCE:g} of the proposals at "
            f"their last level (lowest {min(low):.3g}), so the particles there are copies and the estimate and its "
            f"error bar are not trusted; use more moves, or the default target_accept/step0, or kernel 'ess'")


MAX_REPLICA_SD = 2.0
"""Replica spread (nats) above which the log-normal combination is not trusted (see
:func:`combine_replicas`)."""

MAX_SPLITTING_SD = 1.1
"""Ideal splitting's replica sd (nats) above which an estimate is flagged 'few-particles' (see
:func:`few_particles`)."""


def few_particles(levels: float, settings: NestedSettings) -> tuple[float, str | None]:
    """(sd, reason or None): the replica sd that ideal splitting predicts for ``levels`` levels
    kept at fraction p0 by N particles, sqrt(L (1 - p0) / (p0 N)) (each level's fraction
    estimated from N independent particles; Cerou, Del Moral, Furon & Guyader 2012, "Sequential
    Monte Carlo for rare event estimation", Stat. Comput. 22), and a reason where it exceeds
    :data:`MAX_SPLITTING_SD`. MCMC moves only add to that spread, so 8 replicas then miss the
    upper tail often: over 24 seeds of 'majority' on boolean7 (ln P -48, L ~ 69) the estimates
    that did not fall back were low with too small an error bar at 50 particles (predicted sd
    1.17: rms z 1.7) and 25 (1.66: rms z 3.4); at the default 200 (0.59) the error bar is honest
    (observed/stated 1.10 against counts), and at 100 particles on ln P ~ -77 (1.05) nested agreed
    with the GP (rms z 0.96): benchmarks/RESULTS.md "Issue 10"."""
    n, p0 = settings.particles, settings.p0
    sd = math.sqrt(max(levels, 0.0) * (1 - p0) / (p0 * n))
    if sd <= MAX_SPLITTING_SD:
        return sd, None
    need = math.ceil(levels * (1 - p0) / (p0 * MAX_SPLITTING_SD ** 2))
    return sd, (f"few particles for {levels:.0f} levels: ideal splitting alone spreads a replica by sd {sd:.2f} nats "
                f"(> {MAX_SPLITTING_SD:g}), where the estimates were measured low with too small an error bar; use "
                f"particles >= {need}")


def combine_replicas(values: list[float]) -> tuple[float, float | None, float, float | None]:
    """(ln P_hat, SE, mean, sd) from replica estimates l_r: the log-normal mean
    mean + s^2/2 with SE^2 = s^2/R + s^4/(2(R-1)) (module docstring).

    Where the replicas spread by more than :data:`MAX_REPLICA_SD` nats the log-normal shape is
    not supported by R values (its correction s^2/2 grows without bound: a spread of 10 nats
    gives ln P_hat = mean + 50, beyond 0), so the estimate falls back to the mean of the replicas'
    probabilities, ln((1/R) sum_r exp(l_r)) (each exp(l_r) is close to unbiased for P; the value
    lies between mean(l) and max(l) <= 0), with the log-normal SE kept as the (wide) error bar,
    measured conservative over repeated seeds (observed spread 0.33-0.43 of it, bias within it;
    benchmarks/nested_fallback.py); :func:`nested_log_p` then says so in ``reason``."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, mean, None
    s2 = float(v.var(ddof=1))
    se = math.sqrt(s2 / len(v) + s2 * s2 / (2 * (len(v) - 1)))
    if math.sqrt(s2) > MAX_REPLICA_SD:
        top = float(v.max())
        return top + math.log(float(np.mean(np.exp(v - top)))), se, mean, math.sqrt(s2)
    return mean + s2 / 2, se, mean, math.sqrt(s2)


def nested_log_p(spec: ExperimentSpec, labels: np.ndarray, settings: NestedSettings | None = None, *, seed: int = 0,
                 map_fn: MapFn | None = None) -> NestedResult:
    """ln P(f) of the finite network of ``spec`` for ``labels`` (M,) on its input set.

    Replicas run as ``map_fn(task, range(R))`` (e.g. ``functools.partial(volume.jobs.ray_map,
    address=...)``) or in this process; the result is the same."""
    settings = settings or NestedSettings()
    t0 = time.perf_counter()
    inputs = load_inputs(spec.inputs)
    labels = np.asarray(labels)
    margin = Margin(spec, inputs, labels, settings.batch)
    n_active = len(margin.active)
    common = dict(settings=asdict(settings), n_active_inputs=n_active, n_fixed_inputs=len(labels) - n_active,
                  n_params=margin.dim)
    if margin.impossible is not None or n_active == 0:
        # f is impossible (-inf), or every input is fixed by the prior and f agrees (P = 1): exact.
        exact = -math.inf if margin.impossible is not None else 0.0
        reason = margin.impossible or "every input's output is fixed by the prior and f agrees with it: P(f) = 1"
        return NestedResult(log_p=exact, stderr=0.0, converged=True, reason=reason, replicas=[],
                            mean_replica=None, replica_sd=None, levels_mean=0.0, evaluations=0, shrink_mean=None,
                            stuck_fraction=None, seconds=time.perf_counter() - t0, **common)
    task = ReplicaTask(spec, labels, settings, seed)
    items = list(range(settings.replicas))
    results: list[ReplicaResult] = map_fn(task, items) if map_fn is not None else [task(r) for r in items]
    values = [r.log_p for r in results]
    bad = [r for r in results if not r.converged]
    diag = dict(levels_mean=float(np.mean([r.levels for r in results])), evaluations=sum(r.evaluations for r in results),
                shrink_mean=_mean_or_none([r.shrink_mean for r in results]),
                stuck_fraction=_mean_or_none([r.stuck_fraction for r in results]),
                seconds=time.perf_counter() - t0,
                acceptance=_mean_or_none([r.acceptance for r in results]),
                acceptance_last=_mean_or_none([r.acceptance_last for r in results]),
                last_step=_mean_or_none([r.last_step for r in results]),
                stuck_replicas=sum(r.acceptance_last < MIN_ACCEPTANCE for r in results if r.acceptance_last is not None)
                if settings.kernel == "pcn" else None)
    stuck = stuck_chains(results)
    if bad:
        upper = max(values)
        reason = f"{len(bad)} of {len(results)} replicas did not reach f: {bad[0].reason}"
        return NestedResult(log_p=upper, stderr=None, converged=False, reason=join_reasons(reason, stuck),
                            replicas=values, mean_replica=None, replica_sd=None, **diag, **common)
    log_p, se, mean, sd = combine_replicas(values)
    diag["splitting_sd"], few = few_particles(diag["levels_mean"], settings)
    reason = None
    if sd is not None and sd > MAX_REPLICA_SD:
        reason = (f"replicas spread by sd = {sd:.1f} nats (> {MAX_REPLICA_SD:g}): the log-normal combination is not "
                  f"reliable, so ln P is the log of the replicas' mean probability, with the log-normal error "
                  f"bar (wide: over repeated seeds such estimates spread by ~0.4 of it, and their bias, low by up "
                  f"to ~2 nats at sd ~4, stayed within it); use more particles and replicas")
    return NestedResult(log_p=log_p, stderr=se, converged=True, reason=join_reasons(reason, stuck, few),
                        replicas=values, mean_replica=mean, replica_sd=sd, **diag, **common)


def moves_diagnostic(d: Mapping[str, Any]) -> str:
    """One line of the moves' own diagnostic from a result's ``to_dict()`` (or a mapping with its
    keys): pCN's acceptance (mean, last level) and last step, ESS's tries per step and the
    fraction that ran out of tries; '' when no level moved."""
    if d.get("acceptance") is not None:
        return (f"pcn acceptance {d['acceptance']:.2f} (last level {d['acceptance_last']:.2f}, "
                f"step {d['last_step']:.3g})")
    if d.get("shrink_mean") is not None:
        return f"ess {d['shrink_mean']:.1f} tries/step ({d['stuck_fraction']:.1%} ran out)"
    return ""


def join_reasons(*reasons: str | None) -> str | None:
    """The reasons given, in order, joined by '; ' (None when there are none)."""
    kept = [r for r in reasons if r]
    return "; ".join(kept) if kept else None


__all__ = ["work_bound", "macs_per_evaluation", "NestedSettings", "NestedResult", "Margin", "nested_log_p", "subset_simulation", "combine_replicas", "MAX_REPLICA_SD",
           "SETTINGS_FIELDS", "USER_FIELDS", "REPLICA_COPIES", "MIN_ACCEPTANCE", "stuck_chains",
           "MAX_SPLITTING_SD", "few_particles", "join_reasons", "moves_diagnostic", "ReplicaTask", "NestedError"]
