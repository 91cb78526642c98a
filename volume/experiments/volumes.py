"""log P(f) of the functions found, for the flatness-vs-volume experiment.

* 'table': a prior FrequencyTable of the system's spec (built with
  :class:`volume.sampler.Sampler` over blocks 0..prior_blocks-1). log P(f) = ln(n_f / N);
  a function never drawn gets the one-sided 95% upper bound 1 - 0.05^(1/N) (about 3/N),
  flagged by ``in_table = False``.
* 'nested': the finite network's own volume by subset simulation in parameter space
  (:func:`volume.nested.nested_log_p`), with its standard error from independent replicas;
  settings :data:`NESTED_SETTINGS` (about 1 nat of error at ln P = -40; functions rarer than
  about ln P = -50 are flagged 'few-particles' at its 60 particles: give ``nested`` settings
  with more particles for them, e.g. 100 to about -84).
* 'gp': the Gaussian-process (EP) estimate ``volume.gp.estimate.log_prior(spec, labels).log_p``
  with the analytic NNGP kernel of the spec's whole input set, computed once and passed
  as ``kernel_matrix``.
"""

from __future__ import annotations

import math

import numpy as np

from volume.estimate import unseen_upper_bound
from volume.gp.estimate import log_prior
from volume.gp.kernels import spec_kernel
from volume.inputs import load_inputs
from volume.keys import pack_labels
from volume.runner import run_local
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable


def prior_table(spec: ExperimentSpec, blocks: int) -> FrequencyTable:
    """Prior table of ``spec`` over blocks 0..blocks-1."""
    return run_local(spec, blocks * spec.block_size)


def table_log_prior(table: FrequencyTable, labels: np.ndarray) -> tuple[float, bool]:
    """(ln P(f), whether f is in the table) for labels (M,)."""
    n_f = int(table.lookup_keys(pack_labels(labels[None], table.classes))[0])
    n = table.n_samples
    return (math.log(n_f / n), True) if n_f else (math.log(unseen_upper_bound(n)), False)


NESTED_SETTINGS = dict(particles=60, replicas=4)
"""Settings of the experiment's nested volume (see benchmarks/RESULTS.md, "Issue 10")."""


class NestedVolume:
    """(ln P(f), its standard error) by the nested estimator of the finite network; results
    cached by function (the alpha-rescaled network computes the same function).
    :meth:`replica_stats` gives the replicas' mean and standard deviation of the same run (the
    combined value is mean + sd^2 / 2, so a large spread shows there first)."""

    def __init__(self, spec: ExperimentSpec, seed: int = 0, **settings):
        from volume.nested import NestedSettings

        self.spec, self.seed = spec, seed
        self.settings = NestedSettings.from_mapping({**NESTED_SETTINGS, **settings})
        self.cache: dict[bytes, tuple[float, float]] = {}
        self.stats: dict[bytes, tuple[float, float]] = {}
        self.flags: dict[bytes, tuple[str, ...]] = {}  # NestedResult.flags: fallbacks, stuck chains, few particles

    def __call__(self, labels: np.ndarray) -> tuple[float, float]:
        from volume.nested import nested_log_p

        key = np.asarray(labels, dtype=np.uint8).tobytes()
        if key not in self.cache:
            r = nested_log_p(self.spec, labels, self.settings, seed=self.seed)
            self.cache[key] = (float(r.log_p), math.nan if r.stderr is None else float(r.stderr))
            self.stats[key] = (math.nan if r.mean_replica is None else float(r.mean_replica),
                               math.nan if r.replica_sd is None else float(r.replica_sd))
            self.flags[key] = r.flags
        return self.cache[key]

    def method(self, labels: np.ndarray) -> str:
        """'nested', or 'nested(FLAG,...)' when the estimate is flagged (NestedResult.flags), so that
        an experiment's method column shows which numbers are fallbacks or failed diagnostics."""
        self(labels)
        flags = self.flags[np.asarray(labels, dtype=np.uint8).tobytes()]
        return f"nested({','.join(flags)})" if flags else "nested"

    def replica_stats(self, labels: np.ndarray) -> tuple[float, float]:
        """(mean, standard deviation) of the replicas' ln P for ``labels`` (computed if needed)."""
        self(labels)
        return self.stats[np.asarray(labels, dtype=np.uint8).tobytes()]


class GPVolume:
    """log P(f) by volume.gp.estimate.log_prior with the spec's analytic kernel, computed
    once; results cached by function. ``importance_samples`` > 0 adds the importance-sampling
    correction (seeded by ``seed``); ``result(labels)`` is the whole GPLogPrior."""

    def __init__(self, spec: ExperimentSpec, importance_samples: int = 0, seed: int = 0):
        self.spec = spec
        self.importance_samples = importance_samples
        self.seed = seed
        self.cache: dict[bytes, object] = {}
        self.kernel = None

    def result(self, labels: np.ndarray):
        if self.kernel is None:
            self.kernel = spec_kernel(self.spec, "analytic", load_inputs(self.spec.inputs))[0]
        key = np.asarray(labels, dtype=np.uint8).tobytes()
        if key not in self.cache:
            self.cache[key] = log_prior(self.spec, labels, kernel_matrix=self.kernel,
                                        importance_samples=self.importance_samples, seed=self.seed)
        return self.cache[key]

    def __call__(self, labels: np.ndarray) -> float:
        return float(self.result(labels).log_p)
