"""Flatness against volume at the minima that optimizers find (the comparison of Zhang
et al. 2021, "Why flatness does and does not correlate with generalization for deep
neural networks", with the measures of Keskar et al. 2017 and Pittorino et al. 2022 and
the reparametrization argument of Dinh et al. 2017).

For every system (spec, target function, training split) and every optimizer setting,
``repeats`` networks are trained from prior draws to zero training error
(:class:`volume.train.TrainingRun`, block 0 of a training spec with block_size = repeats).
For each minimum theta* the experiment records the test error, log P(f) of the function
found (:mod:`volume.experiments.volumes`: ``log_prior_table`` from a prior table,
``log_prior_gp`` from the GP/EP estimate, as the system's ``volume`` asks) and the flatness measures
(:mod:`volume.experiments.measures`). Then theta* is alpha-rescaled at one hidden layer
with alpha_i = exp(u_i), u_i ~ U(-ln a, ln a) (seeded), and everything is measured again:
the function (all labels) and hence log P(f) stay the same, the Hessian measures and
Keskar's sharpness move by orders of magnitude, the local energy, adaptive sharpness and
lambda_max of the normalised representative do not.

Outputs in the output directory: ``results.csv`` (one row per trained network),
``correlations.csv`` (Kendall tau and Spearman rho, scipy.stats, of every measure with
the test error over the converged networks of a system, before and after rescaling),
``flatness_<system>.png`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

from volume.experiments.config import VOLUME_METHODS, FlatnessConfig, System
from volume.experiments.measures import MEASURE_NAMES, local_energy_names, measure
from volume.experiments.volumes import GPVolume, NestedVolume, prior_table, table_log_prior
from volume.inputs import load_inputs
from volume.keys import labels_to_hex
from volume.reparam import alpha_rescale
from volume.train import TrainingRun


def measure_columns(config: FlatnessConfig) -> list[str]:
    """The quantities correlated with the test error."""
    used = [m for m in VOLUME_METHODS if any(m in s.volume for s in config.systems)]
    return [f"log_prior_{m}" for m in used] + list(MEASURE_NAMES) + local_energy_names(config.measures)


def split(system: System, n_inputs: int) -> np.ndarray:
    """Sorted training indices: ``train_size`` of the inputs, drawn with ``split_seed``."""
    rng = np.random.default_rng(system.split_seed)
    return np.sort(rng.choice(n_inputs, size=system.train_size, replace=False))


def run_system(k: int, system: System, config: FlatnessConfig, log: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    """Rows of one system, and notes (e.g. a volume that could not be computed)."""
    spec, notes = system.spec, []
    inputs = load_inputs(spec.inputs)
    train_idx = split(system, inputs.n_inputs)
    volumes = {}
    if "table" in system.volume:
        t0 = time.perf_counter()
        table = prior_table(spec, system.prior_blocks)
        log(f"[{system.name}] prior table: {table.n_samples} samples, {table.n_distinct} functions "
            f"({time.perf_counter() - t0:.1f} s)")
        volumes["table"] = lambda labels: table_log_prior(table, labels)
    if "gp" in system.volume:
        gp = GPVolume(spec)
        volumes["gp"] = lambda labels: (gp(labels), "")
    if "nested" in system.volume:
        volumes["nested"] = NestedVolume(spec)

    def volume(labels, row, suffix=""):
        for method in VOLUME_METHODS:
            value, flag = volumes[method](labels) if method in volumes else (math.nan, "")
            row[f"log_prior_{method}{suffix}"] = value
            if method == "table" and not suffix:
                row["in_table"] = flag
            if method == "nested":
                row[f"log_prior_nested_se{suffix}"] = flag if method in volumes else math.nan

    rng = np.random.default_rng([config.rescale.seed, k])
    rows: list[dict] = []
    for j, run in enumerate(system.runs):
        tspec = spec.replace(block_size=run.repeats, training=run.training(train_idx.tolist(), system.target))
        tr = TrainingRun(tspec, inputs)
        t0 = time.perf_counter()
        results = tr.results(0)
        log(f"[{system.name}] {run.label}: {sum(r.converged for r in results)}/{len(results)} converged "
            f"({time.perf_counter() - t0:.1f} s)")
        for i, r in enumerate(results):
            alpha = float(np.exp(rng.uniform(-np.log(config.rescale.alpha_max), np.log(config.rescale.alpha_max))))
            seed = len(rows)
            row = {"system": system.name, "run": run.label, "optimizer": run.optimizer, "lr": run.lr,
                   "batch_size": run.batch_size, "loss": run.loss, "rho": run.rho if run.optimizer == "sam" else "",
                   "index": i, "converged": r.converged, "epochs": r.epochs,
                   "train_error": r.curve[-1]["train_error"], "test_error": tr.test_error(r.labels),
                   "function": labels_to_hex(r.labels, spec.output.classes), "alpha": alpha}
            volume(r.labels, row)
            row.update(measure(tr.objective, r.theta, config.measures, seed))
            rescaled = tr.objective.flatten(alpha_rescale(spec, r.params, config.rescale.layer, alpha))
            labels2 = tr.objective.labels(rescaled, inputs.x)
            row["function_unchanged"] = bool(np.array_equal(labels2, r.labels))
            after = measure(tr.objective, rescaled, config.measures, seed)
            row.update({f"{name}_rescaled": v for name, v in after.items()})
            volume(labels2, row, "_rescaled")
            rows.append(row)
    return rows, notes


def correlations(rows: list[dict], columns: list[str]) -> list[dict]:
    """Kendall tau and Spearman rho of each column (before/after rescaling) with the test
    error, per system, over converged networks with finite values (NaN where fewer than 3
    or a column is constant; columns a system does not compute are left out)."""
    out = []
    for system in dict.fromkeys(r["system"] for r in rows):
        sub = [r for r in rows if r["system"] == system and r["converged"]]
        for col in columns:
            if not any(np.isfinite(r[col]) for r in sub):
                continue  # not computed for this system (e.g. a table volume on MNIST)
            for when, name in (("before", col), ("after", f"{col}_rescaled")):
                pairs = np.array([(r[name], r["test_error"]) for r in sub
                                  if np.isfinite(r[name]) and np.isfinite(r["test_error"])], dtype=float)
                rec = {"system": system, "measure": col, "when": when, "n": len(pairs)}
                if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
                    kt = stats.kendalltau(pairs[:, 0], pairs[:, 1])
                    sr = stats.spearmanr(pairs[:, 0], pairs[:, 1])
                    rec.update(kendall_tau=float(kt.statistic), kendall_p=float(kt.pvalue),
                               spearman_rho=float(sr.statistic), spearman_p=float(sr.pvalue))
                else:
                    rec.update(kendall_tau=math.nan, kendall_p=math.nan, spearman_rho=math.nan, spearman_p=math.nan)
                out.append(rec)
    return out


def movement(rows: list[dict], columns: list[str]) -> dict[str, dict[str, float]]:
    """Per measure: median and maximum of |log10(after / before)| over the networks (positive values)."""
    res = {}
    for col in columns:
        if col.startswith("log_prior"):
            d = np.array([abs(r[f"{col}_rescaled"] - r[col]) / math.log(10) for r in rows if np.isfinite(r[col])])
        else:
            d = np.array([abs(math.log10(r[f"{col}_rescaled"] / r[col])) for r in rows
                          if r[col] > 0 and r[f"{col}_rescaled"] > 0])
        res[col] = {"median_abs_log10_ratio": float(np.median(d)) if d.size else math.nan,
                    "max_abs_log10_ratio": float(d.max()) if d.size else math.nan, "n": int(d.size)}
    return res


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def run(config: FlatnessConfig, out: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """Run the whole experiment and write its outputs to ``out``; returns the summary."""
    from volume.experiments.plots import plot_system

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, notes = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for k, system in enumerate(config.systems):
            r, n = run_system(k, system, config, log)
            rows += r
            notes += n
    finally:
        torch.set_num_threads(threads)
    cols = measure_columns(config)
    corr = correlations(rows, cols)
    write_csv(out / "results.csv", rows)
    write_csv(out / "correlations.csv", corr)
    plots = []
    for system in config.systems:
        path = out / f"flatness_{system.name}.png"
        plot_system([r for r in rows if r["system"] == system.name],
                    [c for c in corr if c["system"] == system.name], cols, path, title=f"{config.name}: {system.name}")
        plots.append(path.name)
    summary = {"name": config.name, "networks": len(rows), "converged": sum(r["converged"] for r in rows),
               "functions_unchanged_by_rescaling": all(r["function_unchanged"] for r in rows),
               "movement": {s.name: movement([r for r in rows if r["system"] == s.name], cols) for s in config.systems},
               "notes": notes, "plots": plots, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(format_correlations(corr))
    return summary


def format_correlations(corr: list[dict]) -> str:
    """Plain-text table: measure, Kendall tau and Spearman rho before -> after, per system."""
    lines = [f"{'system':<10} {'measure':<24} {'tau before':>10} {'tau after':>10} {'rho before':>10} {'rho after':>10}"]
    by = {(c["system"], c["measure"], c["when"]): c for c in corr}
    for (system, m, when), c in by.items():
        if when != "before":
            continue
        a = by[(system, m, "after")]
        lines.append(f"{system:<10} {m:<24} {c['kendall_tau']:>10.3f} {a['kendall_tau']:>10.3f} "
                     f"{c['spearman_rho']:>10.3f} {a['spearman_rho']:>10.3f}")
    return "\n".join(lines)
