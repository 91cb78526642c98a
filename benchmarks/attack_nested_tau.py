"""Kendall tau of the finite-network ln P(f) (nested sampling) against test error, from the
results.csv of an attack-set run with volume = ["nested", ...] (benchmarks/RESULTS.md, Issue 11).

The experiment writes the replicas' mean and spread (``log_prior_nested_replica_mean`` /
``_replica_sd``); outputs made before those columns existed (the ESS run of RESULTS.md) are read
by inverting the log-normal combination ln P = mean(l) + s^2/2, SE^2 = s^2/R + s^4/(2(R-1))
(exact there: the fallback for spreads above 2 nats came later), given R (``--replicas``).
Besides the Kendall taus of correlations.csv this prints the nested - GP gap as z-scores.

    python benchmarks/attack_nested_tau.py RESULTS_DIR [--replicas 4]
"""

import argparse
import csv
import math

import numpy as np
from scipy import stats


def replica_mean_sd(log_p: float, se: float, r: int) -> tuple[float, float]:
    a, b = 1 / (2 * (r - 1)), 1 / r
    v = (-b + math.sqrt(b * b + 4 * a * se * se)) / (2 * a)
    return log_p - v / 2, math.sqrt(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--replicas", type=int, default=4, help="R of an output without the replica columns")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(f"{args.results}/results.csv")))
    for r in rows:
        if r.get("log_prior_nested_replica_mean"):  # written by the experiment
            m, s = float(r["log_prior_nested_replica_mean"]), float(r["log_prior_nested_replica_sd"])
        else:  # an older output: invert the log-normal combination
            m, s = replica_mean_sd(float(r["log_prior_nested"]), float(r["log_prior_nested_se"]), args.replicas)
        r["nested_replica_mean"], r["nested_replica_sd"] = m, s
    z = [(float(r["log_prior_nested"]) - float(r["log_prior_gp"]))
         / math.hypot(float(r["log_prior_nested_se"]), float(r["log_prior_gp_se"] or 0)) for r in rows]
    print(f"nested - GP as z = gap / combined SE over {len(z)} functions: median {np.median(z):+.2f}, "
          f"|z| <= 2 for {sum(abs(v) <= 2 for v in z)}, rms {math.sqrt(np.mean(np.square(z))):.2f}\n")
    sizes = sorted({int(r["attack_size"]) for r in rows})
    cols = ["log_prior_nested", "nested_replica_mean", "log_prior_gp", "log_prior_gp_st"]
    print("| attack size | n | nested replica sd median [max] | nested replica mean - GP, mean [min, max] |")
    print("|---|---|---|---|")
    for a in sizes:
        sub = [r for r in rows if int(r["attack_size"]) == a]
        sd = np.array([r["nested_replica_sd"] for r in sub])
        d = np.array([r["nested_replica_mean"] - float(r["log_prior_gp"]) for r in sub])
        print(f"| {a} | {len(sub)} | {np.median(sd):.1f} [{sd.max():.1f}] | {d.mean():+.1f} [{d.min():+.1f}, {d.max():+.1f}] |")
    print()
    print("| ln P(f) column | " + " | ".join(f"{loss} pooled" for loss in ("ce", "mse", "ce+mse"))
          + " | " + " | ".join(f"a={a}" for a in sizes) + " |")
    print("|---|" + "---|" * (3 + len(sizes)))
    for c in cols:
        cells = []
        for loss in ("ce", "mse", "ce+mse"):
            sub = [r for r in rows if loss == "ce+mse" or r["loss"] == loss]
            t = stats.kendalltau([float(r[c]) for r in sub], [float(r["test_error"]) for r in sub])
            cells.append(f"{t.statistic:+.2f} ({t.pvalue:.2g})")
        for a in sizes:
            sub = [r for r in rows if int(r["attack_size"]) == a]
            t = stats.kendalltau([float(r[c]) for r in sub], [float(r["test_error"]) for r in sub])
            cells.append(f"{t.statistic:+.2f} ({t.pvalue:.2g})")
        print(f"| {c} | " + " | ".join(cells) + " |")
    allr = rows
    t = stats.kendalltau([r["nested_replica_mean"] for r in allr], [float(r["log_prior_gp"]) for r in allr])
    print(f"\nKendall tau of the nested replica mean against the GP ln P(f), all {len(allr)}: "
          f"{t.statistic:+.2f} (p = {t.pvalue:.2g})")
    t = stats.kendalltau([r["nested_replica_mean"] for r in allr], [int(r["attack_size"]) for r in allr])
    print(f"Kendall tau of the nested replica mean against the attack size: {t.statistic:+.2f} (p = {t.pvalue:.2g})")


if __name__ == "__main__":
    main()
