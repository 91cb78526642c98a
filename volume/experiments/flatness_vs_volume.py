"""Flatness against volume at the minima that optimizers find (the comparison of Zhang
et al. 2021, "Why flatness does and does not correlate with generalization for deep
neural networks", with the measures of Keskar et al. 2017 and Pittorino et al. 2022 and
the reparametrization argument of Dinh et al. 2017).

For every system (spec, target function, training split), every attack size a and every
optimizer setting, ``repeats`` networks are trained from prior draws to zero training error on
S plus an attack set of a inputs with flipped labels (:func:`partition`; Zhang et al.'s way of
spreading the test errors; a = 0 is plain training), via :class:`volume.train.TrainingRun`
(block 0 of a training spec with block_size = repeats). For each minimum theta* the experiment
records the test error on T, ln P(f) of the function found on the whole input set with its
standard error and method (:mod:`volume.experiments.volume_fn`: 'table' counted from a prior
table, 'gp' the GP/EP estimate, 'auto' counted where the table holds f, as the system's
``volume`` asks; with ``volume_train_test`` also ``log_prior_gp_st``, the GP probability of the
labels on S and T alone, attack inputs left free, so that the flipped attack labels themselves
do not enter the volume) and the flatness measures (:mod:`volume.experiments.measures`). Then theta*
is alpha-rescaled at one hidden layer with alpha_i = exp(u_i), u_i ~ U(-ln a, ln a) (seeded),
and everything is measured again: the function (all labels) and hence ln P(f) stay the same,
the Hessian measures and Keskar's sharpness move by orders of magnitude, the local energy,
adaptive sharpness and lambda_max of the normalised representative do not.

Outputs in the output directory: ``results.csv`` (one row per trained network, converged or
not), ``correlations.csv`` (Kendall tau and Spearman rho, scipy.stats, of every measure with
the test error over the converged networks, per system, loss and attack size and pooled over
attack sizes, before and after rescaling: :func:`groups`), ``flatness_<system>_<loss>.png``,
``summary.json`` (strict JSON) and ``report.md``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from volume.errors import VolumeError
from volume.experiments.config import FlatnessConfig, System
from volume.experiments.output import markdown_table, write_csv, write_json, write_report
from volume.experiments.measures import MEASURE_NAMES, local_energy_names, measure
from volume.experiments.volume_fn import VOLUME_METHODS, make_volume_fn
from volume.experiments.volumes import prior_table
from volume.inputs import load_inputs, target_labels
from volume.keys import labels_to_hex, labels_to_text
from volume.reparam import alpha_rescale
from volume.threads import torch_threads
from volume.train import TrainingRun


def measure_columns(config: FlatnessConfig) -> list[str]:
    """The quantities correlated with the test error."""
    used = [m for m in VOLUME_METHODS if any(m in s.volume for s in config.systems)]
    used += ["gp_st"] if any(s.volume_train_test for s in config.systems) else []
    used += ["nested_replica_mean"] if "nested" in used else []  # not blown up by the spread (volume_fn.py)
    return [f"log_prior_{m}" for m in used] + list(MEASURE_NAMES) + local_energy_names(config.measures)


def split_indices(n_inputs: int, m: int, seed: int) -> np.ndarray:
    """Sorted training indices: m of the n_inputs drawn without replacement with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n_inputs, size=m, replace=False))


def split(system: System, n_inputs: int) -> np.ndarray:
    """Sorted training indices: ``train_size`` of the inputs, drawn with ``split_seed``."""
    return split_indices(n_inputs, system.train_size, system.split_seed)


def partition(system: System, n_inputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, T, attack pool): S = :func:`split`; the other inputs are permuted with
    (split_seed, attack_seed); T = the first ``n_test`` of them (sorted), the pool the rest in
    permuted order, so the attack set of size a is ``pool[:a]`` and smaller sets are nested in larger."""
    train = split(system, n_inputs)
    rest = np.setdiff1d(np.arange(n_inputs), train)
    if max(system.attack_sizes) == 0 and system.test_size is None:
        return train, rest, rest[:0]
    perm = np.random.default_rng([system.split_seed, system.attack_seed]).permutation(rest)
    n_test = system.n_test
    return train, np.sort(perm[:n_test]), perm[n_test:]


def attacked_target(target: np.ndarray, attack: np.ndarray, classes: int) -> np.ndarray:
    """The target with the labels of ``attack`` flipped: 1 - y (binary), y + 1 mod k (k classes)."""
    y = target.copy()
    y[attack] = (y[attack] + 1) % max(classes, 2)
    return y


def run_system(k: int, system: System, config: FlatnessConfig, log: Callable[[str], None]) -> tuple[list[dict], list[str]]:
    """Rows of one system (every attack size, run and repeat), and notes."""
    spec, notes = system.spec, []
    inputs = load_inputs(spec.inputs)
    train_idx, test_idx, pool = partition(system, inputs.n_inputs)
    target = target_labels(inputs, system.target, spec.output.classes)
    table = None
    if any(m in ("table", "auto") for m in system.volume):
        t0 = time.perf_counter()
        table = prior_table(spec, system.prior_blocks)
        log(f"[{system.name}] prior table: {table.n_samples} samples, {table.n_distinct} functions "
            f"({time.perf_counter() - t0:.1f} s)")
    volume_fns = {m: make_volume_fn(m, spec, table=table, importance_samples=system.importance_samples,
                                    seed=config.rescale.seed, nested=system.nested) for m in system.volume}
    if system.volume_train_test:  # ln P of the labels on S and T only (attack inputs free): the GP marginal
        from volume.experiments.volume_fn import gp_log_p_subset
        from volume.gp.kernels import spec_kernel

        K = spec_kernel(spec, "analytic", inputs)[0]
        ev = np.sort(np.concatenate([train_idx, test_idx]))
        cache: dict[bytes, object] = {}

        def gp_st(s_, labels):
            key = labels.tobytes()
            if key not in cache:
                cache[key] = gp_log_p_subset(K, ev, labels[ev], importance_samples=system.importance_samples,
                                             seed=config.rescale.seed)
            return cache[key]

        volume_fns["gp_st"] = gp_st

    def volume(labels, row, suffix=""):
        for method in (*VOLUME_METHODS, *(("gp_st",) if system.volume_train_test else ())):
            v = volume_fns[method](spec, labels) if method in volume_fns else None
            row[f"log_prior_{method}{suffix}"] = v.log_p if v else math.nan
            row[f"log_prior_{method}_se{suffix}"] = v.stderr if v and v.stderr is not None else math.nan
            row[f"log_prior_{method}_method{suffix}"] = v.method if v else ""
            for k, x in ((v.detail or {}) if v else {}).items():
                row[f"log_prior_{method}_{k}{suffix}"] = x
            if method == "table" and not suffix:
                row["in_table"] = bool(v and v.method == "table")

    rng = np.random.default_rng([config.rescale.seed, k])
    rows: list[dict] = []
    for a in system.attack_sizes:
        attack = pool[:a]
        y_train = attacked_target(target, attack, spec.output.classes)
        fit = np.sort(np.concatenate([train_idx, attack]))
        for j, run in enumerate(system.runs):
            tspec = spec.replace(block_size=run.repeats, training=run.training(
                fit.tolist(), "bits:" + labels_to_text(y_train)))
            tr = TrainingRun(tspec, inputs)
            t0 = time.perf_counter()
            results = tr.results(0)
            log(f"[{system.name}] attack {a}, {run.label}: {sum(r.converged for r in results)}/{len(results)} "
                f"converged ({time.perf_counter() - t0:.1f} s)")
            for i, r in enumerate(results):
                alpha = float(np.exp(rng.uniform(-np.log(config.rescale.alpha_max), np.log(config.rescale.alpha_max))))
                seed = len(rows)
                row = {"system": system.name, "attack_size": a, "run": run.label, "optimizer": run.optimizer,
                       "lr": run.lr, "batch_size": run.batch_size, "loss": run.loss,
                       "rho": run.rho if run.optimizer == "sam" else "",
                       "index": i, "converged": r.converged, "epochs": r.epochs,
                       "train_error": r.curve[-1]["train_error"],
                       "test_error": float(np.mean(r.labels[test_idx] != target[test_idx])),
                       "train_size": len(train_idx), "test_size": len(test_idx),
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
            failed = sum(not r.converged for r in results)
            if failed:
                notes.append(f"{system.name}: attack {a}, {run.label}: {failed} of {len(results)} trainings did not "
                             "reach zero training error; they are in results.csv (converged = False) and left out "
                             "of every correlation")
    return rows, notes


def _kendall_spearman(x: np.ndarray, y: np.ndarray) -> dict:
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        kt = stats.kendalltau(x, y)
        sr = stats.spearmanr(x, y)
        return dict(kendall_tau=float(kt.statistic), kendall_p=float(kt.pvalue),
                    spearman_rho=float(sr.statistic), spearman_p=float(sr.pvalue))
    return dict(kendall_tau=math.nan, kendall_p=math.nan, spearman_rho=math.nan, spearman_p=math.nan)


def groups(rows: list[dict], pool_losses: bool = False) -> list[tuple[str, str, list[dict]]]:
    """(loss label, attack label, rows) of the correlation groups of one system's converged rows.

    Losses are separate ('ce', 'mse'); with ``pool_losses`` also together, labelled 'ce+mse':
    their minima have lambda_max an order of magnitude apart, so they are never mixed unlabelled.
    Attack sizes: 'all' (pooled over sizes), and each size on its own when there are several."""
    losses = sorted({str(r.get("loss", "")) for r in rows})
    loss_groups = [(l, {l}) for l in losses]
    if pool_losses and len(losses) > 1:
        loss_groups.append(("+".join(losses), set(losses)))
    sizes = sorted({int(r.get("attack_size", 0)) for r in rows})
    size_groups = [("all", set(sizes))] + ([(str(a), {a}) for a in sizes] if len(sizes) > 1 else [])
    return [(ln, an, [r for r in rows if str(r.get("loss", "")) in ls and int(r.get("attack_size", 0)) in az])
            for ln, ls in loss_groups for an, az in size_groups]


def correlations(rows: list[dict], columns: list[str], pool_losses: bool = False) -> list[dict]:
    """Kendall tau and Spearman rho (scipy.stats) of each column (before/after rescaling) with
    the test error over the converged networks with finite values, per system and per
    :func:`groups` (loss, attack size); NaN where fewer than 3 or a column is constant;
    columns a system does not compute are left out."""
    out = []
    for system in dict.fromkeys(r["system"] for r in rows):
        sub = [r for r in rows if r["system"] == system and r["converged"]]
        cols = [c for c in columns if any(np.isfinite(r[c]) for r in sub)]  # e.g. no table volume on MNIST
        for loss, attack, g in groups(sub, pool_losses):
            for col in cols:
                for when, name in (("before", col), ("after", f"{col}_rescaled")):
                    pairs = np.array([(r[name], r["test_error"]) for r in g
                                      if np.isfinite(r[name]) and np.isfinite(r["test_error"])], dtype=float)
                    pairs = pairs.reshape(-1, 2)
                    rec = {"system": system, "loss": loss, "attack_size": attack, "measure": col, "when": when,
                           "n": len(pairs)}
                    rec.update(_kendall_spearman(pairs[:, 0], pairs[:, 1]))
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


def read_results(out: str | Path, which: str = "results"):
    """The rows an experiment wrote to ``out`` as a pandas DataFrame: ``results`` (one row per
    trained network: measures before and after rescaling, volumes, test error) or
    ``correlations`` (Kendall/Spearman of each measure with the test error)."""
    if which not in ("results", "correlations"):
        raise VolumeError(f"which = {which!r}: use 'results' or 'correlations'")
    path = Path(out) / f"{which}.csv"
    if not path.is_file():
        raise VolumeError(f"{str(path)!r} does not exist: run the experiment with --out {out} first")
    from volume.frames import pandas

    return pandas().read_csv(path)


def run(config: FlatnessConfig, out: str | Path, *, log: Callable[[str], None] = print, command: str = "") -> dict:
    """Run the whole experiment and write its outputs to ``out``; returns the summary."""
    from volume.experiments.plots import plot_system

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, notes = [], []
    with torch_threads(config.threads):
        for k, system in enumerate(config.systems):
            r, n = run_system(k, system, config, log)
            rows += r
            notes += n
    cols = measure_columns(config)
    corr = correlations(rows, cols, config.pool_losses)
    write_csv(out / "results.csv", rows)
    write_csv(out / "correlations.csv", corr)
    plots = []
    for system in config.systems:
        sys_rows = [r for r in rows if r["system"] == system.name]
        for loss in sorted({r["loss"] for r in sys_rows}):
            path = out / f"flatness_{system.name}_{loss}.png"
            plot_system([r for r in sys_rows if r["loss"] == loss],
                        [c for c in corr if c["system"] == system.name and c["loss"] == loss and c["attack_size"] == "all"],
                        cols, path, title=f"{config.name}: {system.name}, {loss} minima")
            plots.append(path.name)
    summary = {"name": config.name, "networks": len(rows), "converged": sum(r["converged"] for r in rows),
               "not_converged": sum(not r["converged"] for r in rows),
               "functions_unchanged_by_rescaling": all(r["function_unchanged"] for r in rows),
               "movement": {s.name: movement([r for r in rows if r["system"] == s.name], cols) for s in config.systems},
               "correlations": corr, "notes": notes, "plots": plots, "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "summary.json", summary)
    write_report(out / "report.md", f"Flatness and volume against test error: {config.name}",
                 report_sections(summary, corr), config.source, plots, command)
    log(format_correlations(corr))
    return summary


def report_sections(summary: dict, corr: list[dict]) -> list[tuple[str, str]]:
    """Markdown sections of report.md: what ran, then Kendall tau/p before -> after per group."""
    head = (f"{summary['networks']} networks, {summary['converged']} reached zero training error "
            f"({summary['not_converged']} did not: listed in results.csv, left out of the correlations); "
            f"functions unchanged by alpha-rescaling: {summary['functions_unchanged_by_rescaling']}; "
            f"{summary['seconds']} s.")
    if summary["notes"]:
        head += "\n\n" + "\n".join(f"* {n}" for n in summary["notes"])
    by = {(c["system"], c["loss"], c["attack_size"], c["measure"], c["when"]): c for c in corr}
    table = []
    for (system, loss, attack, m, when), c in by.items():
        if when == "before":
            a = by[(system, loss, attack, m, "after")]
            table.append({"system": system, "loss": loss, "attack size": attack, "measure": m, "n": c["n"],
                          "tau before": c["kendall_tau"], "p before": c["kendall_p"],
                          "tau after": a["kendall_tau"], "p after": a["kendall_p"]})
    cols = ["system", "loss", "attack size", "measure", "n", "tau before", "p before", "tau after", "p after"]
    return [("Runs", head),
            ("Kendall tau of each measure with the test error (before -> after alpha-rescaling)",
             "Pooled over attack sizes ('all') and per size; losses separate unless labelled 'ce+mse'.\n\n"
             + markdown_table(table, cols))]


def format_correlations(corr: list[dict]) -> str:
    """Plain-text table: measure, Kendall tau and Spearman rho before -> after, per group."""
    lines = [f"{'system':<10} {'loss':<7} {'attack':>6} {'measure':<24} {'tau before':>10} {'tau after':>10} "
             f"{'p before':>9} {'p after':>9}"]
    by = {(c["system"], c["loss"], c["attack_size"], c["measure"], c["when"]): c for c in corr}
    for (system, loss, attack, m, when), c in by.items():
        if when != "before":
            continue
        a = by[(system, loss, attack, m, "after")]
        lines.append(f"{system:<10} {loss:<7} {attack:>6} {m:<24} {c['kendall_tau']:>10.3f} {a['kendall_tau']:>10.3f} "
                     f"{c['kendall_p']:>9.2g} {a['kendall_p']:>9.2g}")
    return "\n".join(lines)
