"""Optimizer against Bayes, function by function (Mingard et al. 2021, "Is SGD a Bayesian
sampler? Well, almost", JMLR 22).

For a training set S (``train_size`` inputs drawn with ``split_seed``, labelled by the target)
and a test set T (``test_size`` of the other inputs, default all of them), a function is its
labels on S and T: with a small T functions repeat among a few hundred trainings, as in
Mingard et al.'s experiments, and both sides are marginals over the other inputs (counted by
projecting the functions onto S and T; in the GP by taking the sub-kernel of S and T).

* P_opt(f|S): ``trainings`` networks, each a prior draw trained to zero error on S
  (:class:`volume.train.TrainingRun`, blocks of ``training_block_size``). P_opt(f|S) = n_f / n_conv
  over the n_conv trainings that converged; ln P_opt has standard error sqrt(1/n_f - 1/n_conv)
  (multinomial, delta method). Trainings that did not reach zero error are counted and reported
  (``n_failed``), never dropped silently; the optimizer table of each S is saved as HDF5.
* P(f|S) = P(f) / P(U) (Bayes with the zero-error likelihood), counted by rejection
  (:mod:`volume.posterior_sampling`): over ``prior_blocks`` blocks of prior draws, the n_U that
  fit S, n_f of which compute f on S and T; P(f|S) = n_f / n_U, standard error
  sqrt(1/n_f - 1/n_U). One pass over the draws serves every training-set size; only the counts
  of the draws that fit S are kept. With ``check_blocks`` the counts of the first blocks are
  checked against the prior table of the same draws (every function and count). Where no
  fitting draw computes f: ln P(f) from the injectable estimator
  (:func:`volume.experiments.volume_fn.make_volume_fn`, method ``volume``) minus ln P(U) from the
  same GP (:func:`volume.experiments.volume_fn.gp_log_p_subset`), so the ratio is taken within one
  estimator (both importance-corrected, or both plain EP when f's correction failed). Each
  function's row names the method that gave it.
* Error distributions: P_opt(eps) over the optimizer's functions; P_B(eps) over the prior draws
  consistent with S (counted by rejection, projected onto S and T) when there are at least
  ``min_consistent`` of them (below that, P(f|S) is estimated for every function, the counts
  recorded in ``n_prior``); the GP's Bayesian expected error (:func:`volume.gp.posterior.gp_posterior`).
* Agreement: Pearson r of log10 P_opt against log10 P(f|S) over the functions found (all, and the
  counted ones alone), the P_opt-weighted mean |log10 P_opt / P(f|S)|, the optimizer mass on
  functions within a factor 10 of Bayes, the Bayesian mass of the functions found, the total
  variation distance between the two error distributions, the fraction of the functions counted
  on both sides whose ln P_opt - ln P(f|S) is within 2 combined standard errors of 0, and (with
  ``estimate_counted``) the mean |ln P(f|S)| difference of the GP estimate from the count.

Outputs: ``functions.csv``, ``errors.csv``, ``opt_<m>.h5``, ``sgd_vs_bayes_<m>.png``,
``summary.json`` (strict JSON) and ``report.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from volume.errors import VolumeError
from volume.experiments.config import Run, TomlConfig, _err, _positive, check_fields, load_spec
from volume.experiments.flatness_vs_volume import split_indices
from volume.experiments.output import markdown_table, write_csv, write_json, write_report
from volume.experiments.volume_fn import VOLUME_METHODS, gp_log_p_subset, log_count_se, make_volume_fn
from volume.spec import ExperimentSpec

FIELDS = ("name", "spec", "target", "train_sizes", "split_seed", "prior_blocks", "volume", "importance_samples",
          "training", "trainings", "training_block_size", "min_consistent", "threads", "test_size",
          "check_blocks", "estimate_counted", "posterior_max_bytes")


@dataclass(frozen=True)
class SgdBayesConfig(TomlConfig):
    EXAMPLE = "examples/sgd_vs_bayes*.toml"

    name: str
    spec: ExperimentSpec
    target: str
    train_sizes: tuple[int, ...]
    run: Run  # optimizer settings; run.repeats = trainings
    split_seed: int = 0
    prior_blocks: int = 16
    volume: str = "gp"  # estimator for functions no prior draw that fits S computes
    importance_samples: int = 0
    test_size: int | None = None  # compare functions on S and this many test inputs (default: all the rest)
    training_block_size: int = 64
    min_consistent: int = 100  # counted P_B(eps) needs this many consistent prior draws
    threads: int = 1
    check_blocks: int = 0  # check the counts of the first blocks against the prior table of the same draws
    estimate_counted: bool = False  # also the GP estimate of the counted functions' P(f|S) (a check of the GP)
    # cap on the posterior counts' worst-case memory (every draw fitting S and distinct; default
    # Limits.max_table_bytes): raise it for long runs where few draws fit S, knowing the machine
    posterior_max_bytes: int | None = None
    source: dict = field(default_factory=dict, compare=False)

    @property
    def trainings(self) -> int:
        return self.run.repeats


    @classmethod
    def from_dict(cls, d: dict, base: Path = Path(".")) -> "SgdBayesConfig":
        check_fields(d, FIELDS, required=("spec", "target", "train_sizes", "training"))
        spec = load_spec("spec", d["spec"], base)
        sizes = d["train_sizes"]
        if (not isinstance(sizes, list) or not sizes or len(set(sizes)) != len(sizes)
                or any(isinstance(m, bool) or not isinstance(m, int) or not 2 <= m < spec.n_inputs for m in sizes)):
            raise _err("train_sizes", sizes, f"a list of distinct integers in 2..{spec.n_inputs - 1}")
        volume = d.get("volume", "gp")
        if volume not in VOLUME_METHODS or volume == "table":
            raise _err("volume", volume, "the estimator for functions no fitting prior draw computes: 'gp' (or 'auto'), "
                       "or 'nested' (functions on all inputs only)")
        if volume == "nested" and "test_size" in d:
            raise _err("volume", volume, "'nested' estimates functions on all inputs: leave test_size out, or use 'gp'")
        for name in ("prior_blocks", "trainings", "training_block_size", "min_consistent", "threads", "test_size",
                     "posterior_max_bytes"):
            if name in d:
                _positive(name, d[name])
        from volume.posterior_sampling import check_memory

        n, test_size = spec.n_inputs, d.get("test_size")
        check_memory(spec, [(m, m + (n - m if test_size is None else min(test_size, n - m))) for m in sizes],
                     d.get("prior_blocks", 16), d.get("posterior_max_bytes"), blocks_field="prior_blocks",
                     evaluate_field="test inputs (test_size)", cap_field="posterior_max_bytes")
        check = d.get("check_blocks", 0)
        if isinstance(check, bool) or not isinstance(check, int) or not 0 <= check <= d.get("prior_blocks", 16):
            raise _err("check_blocks", check, "0 (no check) or a number of blocks <= prior_blocks")
        if not isinstance(d.get("estimate_counted", False), bool):
            raise _err("estimate_counted", d["estimate_counted"], "true or false")
        imp = d.get("importance_samples", 0)
        if isinstance(imp, bool) or not isinstance(imp, int) or imp < 0 or imp == 1:
            raise _err("importance_samples", imp, "0 (none) or an integer >= 2")
        training = dict(d["training"]) if isinstance(d["training"], dict) else d["training"]
        if not isinstance(training, dict):
            raise _err("training", training, "a table of optimizer settings (optimizer, lr, batch_size, loss, ...)")
        run = Run.from_dict("training", {**training, "repeats": d.get("trainings", 256)})
        return cls(name=str(d.get("name", "sgd-vs-bayes")), spec=spec, target=str(d["target"]),
                   train_sizes=tuple(sizes), run=run, split_seed=int(d.get("split_seed", 0)),
                   prior_blocks=int(d.get("prior_blocks", 16)), volume=volume, importance_samples=imp,
                   training_block_size=int(d.get("training_block_size", 64)), test_size=d.get("test_size"),
                   min_consistent=int(d.get("min_consistent", 100)), threads=int(d.get("threads", 1)),
                   check_blocks=check, estimate_counted=bool(d.get("estimate_counted", False)),
                   posterior_max_bytes=d.get("posterior_max_bytes"), source=d)


def optimizer_functions(config: SgdBayesConfig, inputs, train_idx: np.ndarray):
    """(optimizer table, number of trainings that did not reach zero error) for one S."""
    from volume.table import FrequencyTable
    from volume.train import TrainingRun

    bs = min(config.training_block_size, config.trainings)
    blocks = list(range(math.ceil(config.trainings / bs)))
    tspec = config.spec.replace(block_size=bs, training=config.run.training(train_idx.tolist(), config.target))
    tr = TrainingRun(tspec, inputs)
    found, failed = [], 0
    for b in blocks:
        labels, nf = tr.block(b)
        found.append(labels)
        failed += nf
    return FrequencyTable.from_labels(tspec, np.concatenate(found), blocks), failed


def project(table, indices: np.ndarray, keep=None, chunk: int = 1 << 16) -> dict[bytes, int]:
    """Counts of the table's functions restricted to ``indices`` (marginal counts), over the
    functions for which ``keep(labels)`` (a row mask) holds: {labels on indices as bytes: count}."""
    from volume.keys import unpack_keys

    out: dict[bytes, int] = {}
    for start in range(0, table.n_distinct, chunk):
        lab = unpack_keys(table.keys[start:start + chunk], table.n_inputs, table.classes)
        counts = table.counts[start:start + chunk]
        if keep is not None:
            ok = keep(lab)
            lab, counts = lab[ok], counts[ok]
        sub = np.ascontiguousarray(lab[:, indices])
        uniq, inv = np.unique(sub, axis=0, return_inverse=True)
        for u, c in zip(uniq, np.bincount(inv.ravel(), weights=counts.astype(np.float64), minlength=len(uniq))):
            out[u.tobytes()] = out.get(u.tobytes(), 0) + int(round(c))
    return out


def split(config: SgdBayesConfig, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, T, E = S and T sorted) for training-set size m on n inputs."""
    train = split_indices(n, m, config.split_seed)
    rest = np.setdiff1d(np.arange(n), train)
    test = rest if config.test_size is None else np.sort(
        np.random.default_rng([config.split_seed, m]).choice(rest, size=min(config.test_size, rest.size), replace=False))
    return train, test, np.sort(np.concatenate([train, test]))


def run_size(m: int, config: SgdBayesConfig, post, inputs, target: np.ndarray, K, volume_fn,
             out: Path, log: Callable[[str], None]) -> tuple[list[dict], list[dict], dict]:
    """Function rows, error rows and the summary of one training-set size m (module docstring);
    ``post`` is the :class:`volume.posterior_sampling.PosteriorCounts` of this S."""
    from volume.gp.posterior import gp_posterior
    from volume.keys import labels_to_hex

    spec = config.spec
    n = inputs.n_inputs
    train, test, ev = split(config, m, n)
    assert np.array_equal(ev, post.condition.evaluate)
    pos_s, pos_t = np.searchsorted(ev, train), np.searchsorted(ev, test)
    full = ev.size == n
    t0 = time.perf_counter()
    opt, failed = optimizer_functions(config, inputs, train)
    opt.save(out / f"opt_{m}.h5")
    n_conv = opt.n_samples
    log(f"[|S|={m}] {n_conv} of {n_conv + failed} trainings reached zero error, {opt.n_distinct} functions on all "
        f"inputs ({time.perf_counter() - t0:.1f} s)")
    opt_e = project(opt, ev)
    if any(not np.array_equal(np.frombuffer(f, np.uint8)[pos_s], target[train]) for f in opt_e):
        raise VolumeError("an optimizer-found function disagrees with S: the training bookkeeping is wrong")
    n_u, n_draws = post.n_consistent, post.n_draws
    use_counts = n_u >= config.min_consistent  # a handful of fitting draws give no usable P(f|S) nor error bar
    gp = gp_posterior(K, train, target[train], target)
    log_pu, log_pu_se = post.log_p_u()
    gp_pu = gp_log_p_subset(K, train, target[train], importance_samples=config.importance_samples,
                            seed=config.split_seed)
    gp_pu_ep = gp_log_p_subset(K, train, target[train]) if gp_pu.method == "ep+is" else gp_pu
    def gp_bayes(lab_e: np.ndarray):
        """The estimator's ln P(f) of f's labels on E and its ln P(f|S), with the method and error.
        ln P(U) comes from the same prior: the GP's (both importance-corrected, or both plain EP)
        for a GP volume; the counted fraction of this network's draws that fit S for the finite
        network's (nested) volume."""
        if full:
            lab = np.empty(n, np.uint8)
            lab[ev] = lab_e
            v = volume_fn(spec, lab)
        else:  # the marginal on S and T: the GP's sub-kernel (no network estimator takes subsets)
            v = gp_log_p_subset(K, ev, lab_e, importance_samples=config.importance_samples, seed=config.split_seed)
        if v.method.startswith("nested"):
            if n_u == 0:
                raise VolumeError(f"volume = 'nested' at |S| = {m}: no prior draw fits S, so ln P(U) of the finite "
                                  "network is unknown; raise prior_blocks, or use volume = 'gp'")
            pu_log_p, pu_se, pu_method = log_pu, log_pu_se, "counted"
        else:
            pu = gp_pu if v.method == "ep+is" else gp_pu_ep  # both corrected, or both plain EP
            pu_log_p, pu_se, pu_method = pu.log_p, pu.stderr, pu.method
        se = [x for x in (v.stderr, pu_se) if x is not None]
        return (v, v.log_p - pu_log_p, math.sqrt(sum(x * x for x in se)) if se and v.stderr is not None else math.nan,
                f"{v.method}/{pu_method}")

    rows = []
    found = sorted(opt_e.items(), key=lambda kv: -kv[1])
    n_prior = post.lookup(np.stack([np.frombuffer(f, np.uint8) for f, _ in found])) if found else []
    for (f, n_opt), n_f in zip(found, n_prior):
        lab_e = np.frombuffer(f, np.uint8)
        n_f = int(n_f)
        err = float(np.mean(lab_e[pos_t] != target[test]))
        counted_here = use_counts and n_f > 0
        row = {"train_size": m, "function": labels_to_hex(lab_e, opt.classes), "error": err, "n_opt": n_opt,
               "p_opt": n_opt / n_conv, "log_p_opt": math.log(n_opt / n_conv),
               "log_p_opt_se": log_count_se(n_opt, n_conv), "n_prior": n_f}
        v, est, est_se, est_method = gp_bayes(lab_e) if (not counted_here or config.estimate_counted) else (None,) * 4
        if counted_here:
            row.update(log_prior=math.log(n_f / n_draws), log_prior_method="counted",
                       log_p_bayes=math.log(n_f / n_u), log_p_bayes_se=log_count_se(n_f, n_u), method="counted")
        else:
            row.update(log_prior=v.log_p, log_prior_method=v.method, log_p_bayes=est, log_p_bayes_se=est_se,
                       method=est_method)
        row.update(log_p_bayes_est=est if est is not None else math.nan,
                   log_p_bayes_est_se=est_se if est_se is not None else math.nan, method_est=est_method or "")
        rows.append(row)
    # error distributions: the optimizer's, and the counted Bayesian posterior's (all draws that fit S)
    opt_err: dict[float, int] = {}
    for r in rows:
        opt_err[r["error"]] = opt_err.get(r["error"], 0) + r["n_opt"]
    bayes_err: dict[float, int] = {}
    if n_u >= config.min_consistent:  # test errors of the counted functions, a chunk of packed keys at a time
        by_wrong = np.zeros(test.size + 1, dtype=np.int64)
        for lab, c in post.functions():
            np.add.at(by_wrong, np.count_nonzero(lab[:, pos_t] != target[test][None, :], axis=1), c.astype(np.int64))
        bayes_err = {k / test.size: int(by_wrong[k]) for k in np.flatnonzero(by_wrong).tolist()}
    counted_bayes = bool(bayes_err)
    err_rows = [{"train_size": m, "error": e, "n_opt": opt_err.get(e, 0), "p_opt": opt_err.get(e, 0) / n_conv,
                 "n_bayes": bayes_err.get(e, 0) if counted_bayes else None,
                 "p_bayes": bayes_err.get(e, 0) / n_u if counted_bayes else None}
                for e in sorted(set(opt_err) | set(bayes_err))]
    e_bayes = sum(e * c for e, c in bayes_err.items()) / n_u if counted_bayes else None
    gp_err = float(np.mean(np.where(target[test] == 1, 1 - gp.p_one[np.searchsorted(gp.test_indices, test)],
                                    gp.p_one[np.searchsorted(gp.test_indices, test)])))
    summary = {"train_size": m, "test_size": int(test.size), "functions_on": "all inputs" if full else "S and T",
               "trainings": n_conv + failed, "n_converged": n_conv,
               "n_failed": failed, "n_functions_opt": len(opt_e), "prior_draws": n_draws,
               "n_consistent_prior": n_u, "n_functions_consistent_prior": post.n_distinct,
               "log_p_u_counted": log_pu, "log_p_u_counted_se": log_pu_se,
               "log_p_u_gp": gp_pu.log_p, "log_p_u_gp_se": gp_pu.stderr, "log_p_u_gp_method": gp_pu.method,
               "expected_error_opt": float(sum(r["error"] * r["n_opt"] for r in rows) / n_conv) if n_conv else None,
               "expected_error_opt_se": _weighted_se([r["error"] for r in rows], [r["n_opt"] for r in rows]),
               "expected_error_bayes_counted": e_bayes,
               "expected_error_bayes_counted_se": _weighted_se(list(bayes_err), list(bayes_err.values())) if counted_bayes else None,
               "expected_error_bayes_gp": gp_err,
               "agreement": agreement(rows, err_rows), "seconds": round(time.perf_counter() - t0, 1)}
    return rows, err_rows, summary


def _weighted_se(values: list[float], counts: list[int]) -> float | None:
    """Standard error of the mean of ``values`` repeated ``counts`` times: std / sqrt(n)."""
    n = sum(counts)
    if n < 2:
        return None
    v, c = np.asarray(values, float), np.asarray(counts, float)
    mean = float((v * c).sum() / n)
    return math.sqrt(max(float((c * (v - mean) ** 2).sum()) / (n - 1), 0.0) / n)


def agreement(rows: list[dict], err_rows: list[dict]) -> dict:
    """How closely P_opt(f|S) follows P(f|S) over the functions found (module docstring)."""
    res: dict[str, Any] = {"n_functions": len(rows), "n_counted": sum(r["method"] == "counted" for r in rows)}
    counted = [r for r in rows if r["method"] == "counted"]
    for name, sub in (("all", rows), ("counted", counted)):
        x = np.array([r["log_p_bayes"] for r in sub], float) / math.log(10)
        y = np.array([r["log_p_opt"] for r in sub], float) / math.log(10)
        w = np.array([r["p_opt"] for r in sub], float)
        ok = np.isfinite(x)
        x, y, w = x[ok], y[ok], w[ok]
        res[f"pearson_log10_{name}"] = float(np.corrcoef(x, y)[0, 1]) if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0 else None
        res[f"mean_abs_log10_ratio_{name}"] = float((w * np.abs(y - x)).sum() / w.sum()) if w.sum() > 0 else None
        res[f"opt_mass_within_10x_{name}"] = float(w[np.abs(y - x) <= 1].sum()) if len(w) else None
    # where both sides are counted: is the difference within the counting noise?
    z = [abs(r["log_p_opt"] - r["log_p_bayes"]) / math.hypot(r["log_p_opt_se"], r["log_p_bayes_se"])
         for r in counted if math.hypot(r["log_p_opt_se"], r["log_p_bayes_se"]) > 0]
    res["fraction_counted_within_2se"] = float(np.mean(np.array(z) <= 2)) if z else None
    res["bayes_mass_of_functions_found_counted"] = float(sum(math.exp(r["log_p_bayes"]) for r in counted)) if counted else None
    est = [(r["log_p_bayes"], r["log_p_bayes_est"]) for r in counted if math.isfinite(r.get("log_p_bayes_est", math.nan))]
    res["mean_abs_ln_gp_minus_counted"] = float(np.mean([abs(a_ - b_) for a_, b_ in est])) if est else None
    if all(e["p_bayes"] is not None for e in err_rows) and err_rows:
        res["tv_error_distributions"] = 0.5 * float(sum(abs(e["p_opt"] - e["p_bayes"]) for e in err_rows))
    else:
        res["tv_error_distributions"] = None
    return res


def check_against_table(config: SgdBayesConfig, conditions, log: Callable[[str], None]) -> tuple[list, dict]:
    """The posterior counts of the first ``check_blocks`` prior blocks, checked against the prior
    table of the same draws (every function and count, projected onto E over the table's
    functions that fit S; and n_f / n_U of every function): (the counts, a record of the check)."""
    from volume.experiments.volumes import prior_table
    from volume.posterior_sampling import count_posteriors

    t0 = time.perf_counter()
    posts = count_posteriors(config.spec, conditions, config.check_blocks, max_bytes=config.posterior_max_bytes)
    table = prior_table(config.spec, config.check_blocks)
    rec = {"blocks": config.check_blocks, "draws": table.n_samples, "functions_in_table": table.n_distinct}
    for c, p in zip(conditions, posts):
        ref = project(table, c.evaluate, keep=lambda lab: np.all(lab[:, c.train] == c.labels[None, :], axis=1))
        n_u = sum(ref.values())
        if ref != p.counts or n_u != p.n_consistent or p.n_draws != table.n_samples:
            raise VolumeError(f"posterior counts by rejection disagree with the prior table of the same draws at "
                              f"|S| = {len(c.train)}: a bug in volume.posterior_sampling or the tables")
        rec[f"n_consistent_{len(c.train)}"] = n_u
        rec[f"functions_{len(c.train)}"] = len(ref)
    rec["passed"] = True
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"check: posterior counts of {table.n_samples} draws equal the prior table's ({rec['seconds']} s)")
    return posts, rec


def run(config: SgdBayesConfig, out: str | Path, *, log: Callable[[str], None] = print, command: str = "") -> dict:
    """Run every training-set size and write the outputs to ``out``; returns the summary."""
    from volume.experiments.plots import plot_sgd_vs_bayes
    from volume.gp.kernels import spec_kernel
    from volume.posterior_sampling import Condition, count_posteriors
    from volume.inputs import load_inputs, target_labels

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        spec = config.spec
        inputs = load_inputs(spec.inputs)
        target = target_labels(inputs, config.target, spec.output.classes)
        conditions = []
        for m in config.train_sizes:
            train, _, ev = split(config, m, inputs.n_inputs)
            conditions.append(Condition(train, target[train], ev))
        check, posts = None, None
        if config.check_blocks:
            posts, check = check_against_table(config, conditions, log)
        t1, c1 = time.perf_counter(), time.process_time()
        rest = count_posteriors(spec, conditions, config.prior_blocks, start=min(config.check_blocks, config.prior_blocks),
                                log=log, max_bytes=config.posterior_max_bytes)
        if posts is not None:  # one condition at a time, each pair dropped once merged (the bound covers one pass)
            for i in range(len(rest)):
                rest[i], posts[i] = posts[i].merge(rest[i]), None
        posts = rest
        sampling = {"draws": posts[0].n_draws, "seconds": round(time.perf_counter() - t1, 1),
                    "cpu_seconds": round(time.process_time() - c1, 1)}
        log(f"posterior by rejection: {posts[0].n_draws:,} prior draws; fitting S: "
            + ", ".join(f"|S|={m}: {p.n_consistent}" for m, p in zip(config.train_sizes, posts))
            + f" ({sampling['seconds']} s)")
        K = spec_kernel(spec, "analytic", inputs)[0]
        volume_fn = make_volume_fn("gp" if config.volume == "auto" else config.volume, spec,
                                   importance_samples=config.importance_samples, seed=config.split_seed)
        rows, err_rows, sizes = [], [], []
        for m, post in zip(config.train_sizes, posts):
            r, e, s = run_size(m, config, post, inputs, target, K, volume_fn, out, log)
            rows += r
            err_rows += e
            sizes.append(s)
    finally:
        torch.set_num_threads(threads)
    write_csv(out / "functions.csv", rows)
    write_csv(out / "errors.csv", err_rows)
    plots = []
    for s in sizes:
        m = s["train_size"]
        path = out / f"sgd_vs_bayes_{m}.png"
        plot_sgd_vs_bayes([r for r in rows if r["train_size"] == m], [e for e in err_rows if e["train_size"] == m],
                          s, path, title=f"{config.name}: |S| = {m}, {config.run.label}")
        plots.append(path.name)
    summary = {"name": config.name, "optimizer": config.run.label, "target": config.target,
               "prior_sampling": sampling, "check_against_table": check, "sizes": sizes, "plots": plots,
               "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "summary.json", summary)
    write_report(out / "report.md", f"Optimizer against Bayes: {config.name}", report_sections(sizes),
                 config.source, plots, command)
    return summary


def report_sections(sizes: list[dict]) -> list[tuple[str, str]]:
    rows = []
    for s in sizes:
        a = s["agreement"]
        rows.append({"S": s["train_size"], "trainings": s["trainings"], "failed": s["n_failed"],
                     "functions": s["n_functions_opt"], "counted": a["n_counted"],
                     "draws fitting S": s["n_consistent_prior"],
                     "ln P(U) counted": s["log_p_u_counted"], "ln P(U) GP": s["log_p_u_gp"],
                     "r log10 (all)": a["pearson_log10_all"], "r log10 (counted)": a["pearson_log10_counted"],
                     "mean abs log10 ratio": a["mean_abs_log10_ratio_all"], "opt mass within 10x": a["opt_mass_within_10x_all"],
                     "E err opt": s["expected_error_opt"], "E err Bayes (counted)": s["expected_error_bayes_counted"],
                     "E err Bayes (GP)": s["expected_error_bayes_gp"], "TV(err)": a["tv_error_distributions"],
                     "counted within 2 SE": a["fraction_counted_within_2se"]})
    cols = list(rows[0]) if rows else []
    text = ("Per training-set size: trainings that did not reach zero error ('failed', counted, not in P_opt), "
            "distinct functions found and how many of them some prior draw that fits S computes ('counted', by rejection; "
            "the others are estimated), prior draws that fit S, "
            "agreement of log10 P_opt(f|S) with log10 P(f|S), expected test errors and the total variation "
            "distance between the error distributions (counted Bayes side only), and the fraction of the functions "
            "counted on both sides whose ln P_opt and ln P(f|S) differ by at most 2 combined standard errors.\n\n"
            + markdown_table(rows, cols))
    return [("Agreement", text)]
