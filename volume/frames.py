"""Results as pandas DataFrames, for notebooks.

pandas is optional (``pip install 'volume[notebook]'``) and imported only when a frame is asked
for, so the library and the client do not need it.

* :class:`Estimates`: the list of :class:`volume.estimate.PriorEstimate` that ``prior_estimates``,
  ``top_estimates`` and the client's ``prior``/``top`` return, with ``to_dataframe()``: one row per
  function (function, hex, count, n_samples, p, lower, upper, confidence, seen, lz_complexity);
* :func:`to_dataframe`: rows given as dicts or dataclasses (experiment rows, job lists ...).

``PosteriorResult.to_dataframe()`` gives the distribution of the generalization error, and
``volume.experiments.flatness_vs_volume.read_results`` the rows of an experiment.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


def pandas():
    """The pandas module, or an ImportError that says how to install it."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe() needs pandas: pip install 'volume[notebook]' (or pandas)") from None
    return pd


def _row(x: Any) -> dict:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return dict(x)
    raise TypeError(f"cannot make a DataFrame row of {type(x).__name__}: give dicts or dataclasses")


def to_dataframe(rows: Iterable[Any], columns: list[str] | None = None):
    """A DataFrame with one row per element of ``rows`` (dicts or dataclass instances)."""
    return pandas().DataFrame([_row(r) for r in rows], columns=columns)


class Estimates(list):
    """A list of ``PriorEstimate`` (it is a plain list otherwise) that converts to a DataFrame."""

    def to_dataframe(self):
        from volume.estimate import PriorEstimate

        return to_dataframe(self, columns=[f.name for f in dataclasses.fields(PriorEstimate)])
