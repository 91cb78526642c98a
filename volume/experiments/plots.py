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


def plot_sgd_vs_bayes(rows: list[dict], err_rows: list[dict], summary: dict, path: Path, title: str = "") -> None:
    """Left: P_opt(f|S) against P(f|S), log-log, one point per function found, error bars of one
    standard error, coloured by test error; filled where P(f|S) is counted, hollow where it is
    estimated. Right: the error distributions P_opt(eps) and (counted) P_B(eps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    ln10 = math.log(10)
    vmax = max([r["error"] for r in rows] + [1e-9])
    sc = None
    for counted, marker_kw in ((True, {}), (False, {"facecolors": "none"})):
        sub = [r for r in rows if (r["method"] == "counted") == counted and np.isfinite(r["log_p_bayes"])]
        if not sub:
            continue
        x = np.array([r["log_p_bayes"] for r in sub]) / ln10
        y = np.array([r["log_p_opt"] for r in sub]) / ln10
        xe = np.nan_to_num(np.array([r["log_p_bayes_se"] for r in sub], float) / ln10)
        ye = np.array([r["log_p_opt_se"] for r in sub]) / ln10
        ax.errorbar(10 ** x, 10 ** y, xerr=[10 ** x - 10 ** (x - xe), 10 ** (x + xe) - 10 ** x],
                    yerr=[10 ** y - 10 ** (y - ye), 10 ** (y + ye) - 10 ** y], fmt="none", ecolor="0.7", lw=0.6, zorder=1)
        e = np.array([r["error"] for r in sub])
        if counted:
            sc = ax.scatter(10 ** x, 10 ** y, c=e, cmap="viridis", vmin=0, vmax=vmax, s=18, zorder=2,
                            label="P(f|S) counted (rejection)")
        else:
            sc2 = ax.scatter(10 ** x, 10 ** y, c=e, cmap="viridis", vmin=0, vmax=vmax, s=18, marker="D", zorder=2,
                             label="P(f|S) estimated (GP)")
            sc = sc if sc is not None else sc2
    vals = [v for r in rows for v in (r["log_p_bayes"], r["log_p_opt"]) if np.isfinite(v)]
    if vals:
        lo, hi = min(vals) / ln10 - 0.5, max(0.0, max(vals) / ln10) + 0.2
        ax.plot([10 ** lo, 10 ** hi], [10 ** lo, 10 ** hi], "k--", lw=0.8, label="P_opt = P")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("P(f|S)  (Bayesian posterior)")
    ax.set_ylabel("P_opt(f|S)  (optimizer)")
    ax.legend(fontsize=7, loc="lower right")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="test error")
    a = summary["agreement"]
    r_all = a["pearson_log10_all"]
    ax.set_title(f"{summary['n_functions_opt']} functions, {summary['n_converged']} trainings "
                 f"({summary['n_failed']} failed); r = {r_all:.2f}" if r_all is not None else
                 f"{summary['n_functions_opt']} functions, {summary['n_converged']} trainings ({summary['n_failed']} failed)",
                 fontsize=9)
    e = np.array([r["error"] for r in err_rows])
    width = (1.0 / summary["test_size"]) * 0.4
    ax2.bar(e - width / 2, [r["p_opt"] for r in err_rows], width=width, label="P_opt(error)")
    if err_rows and all(r["p_bayes"] is not None for r in err_rows):
        ax2.bar(e + width / 2, [r["p_bayes"] for r in err_rows], width=width, label="P_B(error), counted")
    if summary.get("expected_error_bayes_gp") is not None:
        ax2.axvline(summary["expected_error_bayes_gp"], color="k", ls=":", lw=1, label="Bayes E[error], GP")
    ax2.set_xlabel("test error")
    ax2.set_ylabel("probability")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
