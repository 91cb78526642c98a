"""Pictures of a table: P(f) against rank (log-log), and P(f) against Lempel-Ziv complexity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volume.checks import output_path
from volume.errors import VolumeError
from volume.keys import lz_complexity, unpack_keys
from volume.table import FrequencyTable


def rank_plot(table: FrequencyTable, path: str | Path, max_lz: int = 20000) -> None:
    """Two panels: empirical P(f) = n_f/N against rank on log-log axes (with the 1/N
    resolution floor), and P(f) against LZ complexity for the ``max_lz`` most frequent
    functions."""
    if table.n_samples == 0:
        raise VolumeError("the table is empty: nothing to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    path = output_path(path, "plot file")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise VolumeError(f"plot file {str(path)!r}: unknown image format {path.suffix or '(no extension)'!r}; "
                          f"end the name with one of {', '.join('.' + f for f in sorted(formats))}")

    ranks, freq = table.rank_frequency()
    keys, counts = table.top(max_lz)
    labels = unpack_keys(keys, table.n_inputs, table.classes)
    lz = np.array([lz_complexity(lab) for lab in labels])
    p = counts.astype(np.float64) / table.n_samples

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.loglog(ranks, freq, ".", ms=2, color="C0")
    ax1.axhline(1 / table.n_samples, color="0.6", lw=0.8, ls="--", label="1/N")
    ax1.set_xlabel("rank")
    ax1.set_ylabel("P(f)")
    ax1.set_title(f"rank plot: N = {table.n_samples:,}, {table.n_distinct:,} functions")
    ax1.legend(loc="upper right")
    ax2.semilogy(lz, p, ".", ms=3, alpha=0.5, color="C1")
    ax2.set_xlabel("Lempel-Ziv complexity K(f)")
    ax2.set_ylabel("P(f)")
    ax2.set_title(f"P(f) vs complexity ({len(lz):,} most frequent)")
    name = table.spec.name or table.spec_id
    fig.suptitle(f"{name}: {table.n_inputs} inputs")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
