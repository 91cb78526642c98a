"""Result records of the estimators, shared by the library, the service and the client.

Plain dataclasses with nothing heavier than the standard library behind them, so that the
client (which must import neither Ray, torch nor scipy) can rebuild the answers of the
service as the same types the library returns. ``volume.estimate`` fills them in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PriorEstimate:
    """P(f) of one function: count n_f of N draws, point estimate and interval."""

    function: str  # text form, one label per input
    hex: str  # the packed key with its 0x prefix: accepted back as a function
    count: int
    n_samples: int
    p: float
    lower: float
    upper: float
    confidence: float
    seen: bool
    lz_complexity: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PosteriorResult:
    """The zero-training-error posterior P(f | S) estimated from a prior table (or, for a table
    of optimizer-found functions, P_opt(f | S) on the spec's own S: ``kind='optimizer'``)."""

    n_samples: int
    n_consistent: int  # n_U: draws whose function agrees with S
    n_consistent_functions: int
    p_u: float | None  # None for optimizer tables: P(U) is a prior probability
    p_u_lower: float | None
    p_u_upper: float | None
    confidence: float
    train_size: int
    test_size: int
    expected_error: float | None = None  # Bayesian generalization error, None without a target
    expected_error_stderr: float | None = None
    error_distribution: list[dict] = field(default_factory=list)  # [{"error": e, "posterior": mass}]
    pac_bayes_bound: float | None = None  # from P(U) point estimate
    pac_bayes_bound_conservative: float | None = None  # from the lower end of P(U)'s interval
    top: list[dict] = field(default_factory=list)  # most probable consistent functions
    kind: str = "prior"  # 'prior': Bayesian posterior from prior draws; 'optimizer': P_opt(f|S)
    n_failed: int = 0  # optimizer tables: trainings that did not reach zero error (not counted)
    notes: list[str] = field(default_factory=list)  # what was not computed, and why

    def to_dataframe(self, which: str = "error_distribution"):
        """pandas DataFrame of the ``error_distribution`` (columns error, posterior: the posterior
        mass of the consistent functions with that generalization error) or of the ``top``
        consistent functions."""
        from volume.errors import VolumeError
        from volume.frames import to_dataframe

        if which not in ("error_distribution", "top"):
            raise VolumeError(f"which = {which!r}: use 'error_distribution' or 'top'")
        rows = getattr(self, which)
        return to_dataframe(rows, columns=["error", "posterior"] if which == "error_distribution" and not rows else None)

    def to_dict(self) -> dict:
        return asdict(self)
