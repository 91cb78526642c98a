"""`volume logp SPEC FUNCTION... [--method auto|count|ep|gp|nested] [--table T.h5]`: ln P(f) by
the method asked (``volume.logp.log_p``)."""

from __future__ import annotations

import argparse
import functools
import json

from volume.commands import add_command
from volume.errors import VolumeError
from volume.spec import ExperimentSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "logp", "ln P(f) of functions by counting, EP, the GP estimator or nested sampling",
                    "One entry point (volume.logp.log_p) for every estimator of ln P(f): 'count' reads a table "
                    "(ln n_f/N with its interval, or the upper bound when f was never drawn); 'ep' is EP in the "
                    "GP limit; 'gp' the GP estimator with its standard error (EP-guided sequential importance "
                    "sampling by default); 'nested' the finite network's own volume by subset simulation with "
                    "preconditioned Crank-Nicolson moves, its error bar from independent replicas. 'auto' (default) counts "
                    "when --table holds f at least 100 times, else runs nested.",
                    ["volume logp examples/boolean7.toml parity --method gp",
                     "volume logp examples/boolean7.toml 0x" + "00" * 16 + " --table boolean7.h5",
                     "volume logp examples/boolean7.toml majority --method nested --replicas 8 --ray --json"])
    p.add_argument("spec", help="spec file (.toml or .json)")
    p.add_argument("functions", nargs="+",
                   help="functions: '0'/'1' string (one label per input), hex key (0x...), target rule or @FILE")
    p.add_argument("--method", choices=("auto", "count", "ep", "gp", "nested"), default="auto",
                   help="auto (default): count when --table holds f >= 100 times, else nested")
    p.add_argument("--table", default=None, help="frequency table of the spec (for count / auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the nested estimator")
    p.add_argument("--particles", type=int, default=None, help="nested: particles per replica")
    p.add_argument("--replicas", type=int, default=None, help="nested: independent replicas (error bar)")
    p.add_argument("--p0", type=float, default=None, help="nested: fraction of particles kept per level")
    p.add_argument("--moves", type=int, default=None, help="nested: MCMC steps per particle per level")
    p.add_argument("--kernel", default=None,
                   help="nested: pcn (preconditioned Crank-Nicolson, default) or ess (elliptical slice sampling) moves")
    p.add_argument("--ray", action="store_true", help="nested: replicas as Ray tasks (a local instance unless --address)")
    p.add_argument("--address", default=None, help="Ray cluster for --ray: auto, HOST:6379 or ray://HOST:10001")
    p.add_argument("--json", action="store_true", help="machine-readable output (one JSON list)")
    p.set_defaults(func=cmd_logp)


def settings_from(args):
    from volume.nested import USER_FIELDS, NestedSettings

    return NestedSettings.from_mapping({k: getattr(args, k) for k in USER_FIELDS}, where="--")


def cmd_logp(args) -> int:
    from volume.logp import log_p

    spec = ExperimentSpec.load(args.spec)
    if args.seed < 0:
        raise VolumeError("--seed must be >= 0")
    settings = settings_from(args)
    map_fn = None
    if args.ray or args.address:
        from volume.jobs import ray_map

        map_fn = functools.partial(ray_map, address=args.address)
    table = None
    if args.table:
        from volume.table import FrequencyTable

        table = FrequencyTable.load(args.table)
    from volume.logp import resolve_function

    functions = [resolve_function(spec, f, allow_file=True) if f.startswith("@") else f for f in args.functions]
    results = [log_p(spec, f, args.method, table=table, seed=args.seed, settings=settings, map_fn=map_fn)
               for f in functions]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, sort_keys=True))
        return 0
    for f, r in zip(args.functions, results):
        print(f"{f[:40]}{'...' if len(f) > 40 else ''}  method={r.method}  {_line(r)}")
    return 0


def _line(r) -> str:
    if r.log_p == float("-inf"):
        return f"ln P = -inf ({r.reason})"
    s = f"ln P {'<=' if r.upper_bound else '='} {r.log_p:.5g}"
    if r.stderr is not None:
        s += f" +- {r.stderr:.2g} (stderr)"
    s += f"  (log10 P {'<=' if r.upper_bound else '='} {r.log10_p:.4g})"
    d = r.diagnostics
    if r.method == "count":
        s += f"  n_f = {d['count']} of {d['n_samples']}"
    elif r.method == "nested":
        s += (f"  {d['settings']['replicas']} replicas x {d['settings']['particles']} particles, "
              f"{d['levels_mean']:.1f} levels, {d['seconds']:.1f} s")
        from volume.nested import moves_diagnostic

        moves = moves_diagnostic(d)  # the kernel's own: pCN acceptance, or ESS tries per step
        s += f", {moves}" if moves else ""
    if r.reason:  # fallbacks and diagnostic failures are shown, not only missing error bars
        s += f"  [{r.reason}]"
    return s
