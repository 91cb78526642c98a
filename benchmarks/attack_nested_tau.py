"""Kendall tau of the finite-network ln P(f) (nested sampling) against test error, from the
results.csv of an attack-set run with volume = ["nested", ...] (benchmarks/RESULTS.md, Issue 11).

The experiment's nested column is the replicas' log-normal combination
ln P = mean(l) + s^2/2 with SE^2 = s^2/R + s^4/(2(R-1)) (volume/nested.py); from (ln P, SE) and R
this recovers, exactly, the replicas' mean mean(l) and spread s:
s^2 = v with v^2/(2(R-1)) + v/R = SE^2. With a large spread s the s^2/2 term dominates the
combined value; the replicas' mean (biased low by ~s^2/2, but not blown up) is reported next to it.

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
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    rows = list(csv.DictReader(open(f"{args.results}/results.csv")))
    for r in rows:
        m, s = replica_mean_sd(float(r["log_prior_nested"]), float(r["log_prior_nested_se"]), args.replicas)
        r["nested_replica_mean"], r["nested_replica_sd"] = m, s
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
