"""Figures of the flatness-vs-volume experiment: each measure against the test error,
before (dots) and after (crosses) alpha-rescaling, coloured by attack size when there are
several, and how far rescaling moved each measure. Panel titles give Kendall's tau pooled
over attack sizes, before -> after."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LOG_SCALE = ("lambda_max", "trace", "keskar", "adaptive", "lambda_max_normalised")


def plot_system(rows: list[dict], corr: list[dict], columns: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["converged"]]
    columns = [c for c in columns if any(np.isfinite(float(r[c])) for r in rows)]  # computed for this system
    tau = {(c["measure"], c["when"]): c["kendall_tau"] for c in corr}
    n = len(columns) + 1
    ncol = 4
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.3 * nrow), squeeze=False)
    err = np.array([r["test_error"] for r in rows])
    attack = np.array([float(r.get("attack_size", 0)) for r in rows])
    sizes = np.unique(attack)
    sc = None
    for ax, col in zip(axes.flat, columns):
        before = np.array([r[col] for r in rows], dtype=float)
        after = np.array([r[f"{col}_rescaled"] for r in rows], dtype=float)
        if len(sizes) > 1:
            sc = ax.scatter(before, err, s=14, c=attack, cmap="viridis", label="minimum", alpha=0.8)
            ax.scatter(after, err, s=14, marker="x", c=attack, cmap="viridis", label="alpha-rescaled", alpha=0.8)
        else:
            ax.scatter(before, err, s=14, label="minimum", alpha=0.8)
            ax.scatter(after, err, s=14, marker="x", label="alpha-rescaled", alpha=0.8)
        if col in LOG_SCALE and np.all(np.concatenate([before, after])[np.isfinite(np.concatenate([before, after]))] > 0):
            ax.set_xscale("log")
        ax.set_xlabel(col)
        ax.set_ylabel("test error")
        ax.set_title(f"tau {tau.get((col, 'before'), math.nan):+.2f} -> {tau.get((col, 'after'), math.nan):+.2f}",
                     fontsize=9)
    ax = axes.flat[len(columns)]
    alpha = np.log10([r["alpha"] for r in rows])
    for col in ("lambda_max", "trace", "keskar", "adaptive", "lambda_max_normalised"):
        ratio = [math.log10(r[f"{col}_rescaled"] / r[col]) if r[col] > 0 and r[f"{col}_rescaled"] > 0 else math.nan
                 for r in rows]
        ax.scatter(alpha, ratio, s=10, label=col)
    for col in (c for c in columns if c.startswith("log_prior")):
        ax.scatter(alpha, [(r[f"{col}_rescaled"] - r[col]) / math.log(10) for r in rows], s=10, marker="x",
                   label=col)
    ax.set_xlabel("log10 alpha")
    ax.set_ylabel("log10(after / before)")
    ax.legend(fontsize=6)
    for extra in list(axes.flat)[n:]:
        extra.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    if sc is not None:
        fig.colorbar(sc, ax=list(axes.flat), shrink=0.6, label="attack set size")
    fig.savefig(path, dpi=110)
    plt.close(fig)
