"""`volume sample SPEC -n N -o TABLE.h5`: draw N functions (rounded up to whole blocks)
into a table, resuming or extending the table already at TABLE.h5 (same spec only).

By default the blocks run on Ray: a local instance with one worker per core, or the
cluster named by --address (auto, ray://HOST:10001, HOST:PORT) or by RAY_ADDRESS (set by
`ray job submit -- volume sample ...`). --in-process draws them in this process without Ray.
Either way the table depends only on the spec and N: rerunning resumes a stopped job.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from volume.commands import add_command
from volume.errors import Interrupted
from volume.spec import ExperimentSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sample", "sample the prior over functions into a table", __doc__.split("\n", 2)[2],
                    ["volume sample examples/boolean7.toml -n 1000000 -o boolean7.h5",
                     "volume sample examples/boolean7.toml -n 2000000 -o boolean7.h5          # extend to 2M draws",
                     "volume sample examples/digits.toml -n 100000 -o digits.h5 --in-process",
                     "volume sample examples/boolean7.toml -n 100000000 -o b7.h5 --address auto"])
    p.add_argument("spec", help="experiment spec (.toml or .json), e.g. examples/boolean7.toml")
    p.add_argument("-n", "--draws", type=int, required=True,
                   help="total draws the table should hold (rounded up to whole blocks); rerun to resume")
    p.add_argument("-o", "--output", required=True, help="output table (.h5); an existing one of the same spec is extended")
    p.add_argument("--add", action="store_true", help="add N draws to what the table already holds instead")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--in-process", action="store_true", help="draw in this process, without Ray")
    where.add_argument("--address", default=None,
                       help="Ray cluster to use: auto, ray://HOST:10001 or HOST:PORT (default: RAY_ADDRESS if set, "
                            "else a local instance on 127.0.0.1)")
    p.add_argument("--workers", type=int, default=None,
                   help="blocks drawn at once (default: every CPU of the cluster; a local instance gets this many CPUs)")
    p.add_argument("--pool", choices=("actors", "tasks"), default="actors",
                   help="long-lived actors keeping their buffers (default, faster for long jobs) or one Ray task per "
                        "block; same table either way")
    p.add_argument("--sub-batch", type=int, default=None,
                   help="draws per forward pass (memory/speed only; never changes results; default: chosen to fit "
                        "the cache)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    p.add_argument("--backend", choices=("auto", "compiled", "torch"), default=None,
                   help="auto (default): the compiled kernel where it applies and is built, else PyTorch; compiled; "
                        "torch (the reference path). Same draws either way; labels agree except within float32 "
                        "rounding of a decision boundary. Sets VOLUME_BACKEND for the workers")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0, help="save counted blocks at least this often")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def target_draws(spec: ExperimentSpec, args: argparse.Namespace) -> int:
    from volume.runner import open_table

    if args.add:
        return open_table(spec, args.output).n_samples + args.draws
    return args.draws


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the checkpoint finish
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Sample, saving what is counted when interrupted: SIGTERM (`kill`, `ray job stop`, batch
    schedulers) is handled as Ctrl-C is, and either way the message says how many draws the
    table holds and that rerunning the command resumes."""
    if args.backend is not None:  # read by every Sampler, in this process and in the workers it starts
        os.environ["VOLUME_BACKEND"] = args.backend
    spec = ExperimentSpec.load(args.spec)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _sample(spec, args)
    except KeyboardInterrupt:
        from volume.table import FrequencyTable

        saved = FrequencyTable.load(args.output) if Path(args.output).is_file() else None
        held = (f"{args.output} holds {saved.n_samples} draws ({len(saved.blocks)} blocks), all counted so far"
                if saved is not None else f"nothing was saved to {args.output}")
        raise Interrupted(f"interrupted: {held}; rerun the same command to resume") from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _sample(spec: ExperimentSpec, args: argparse.Namespace) -> int:
    from volume.runner import missing_blocks, open_table, progress_bar, run_local, table_lock

    n = target_draws(spec, args)
    table = open_table(spec, args.output)
    todo = missing_blocks(table, spec, n)
    total = table.n_samples + len(todo) * spec.block_size
    with progress_bar(total, table.n_samples, enabled=not args.quiet) as bar:
        common = dict(sub_batch=args.sub_batch, device=args.device, checkpoint_seconds=args.checkpoint_seconds,
                      on_block=bar.update)
        if args.in_process:
            with table_lock(args.output):
                table = run_local(spec, n, args.output, **common)
        else:
            from volume.jobs import run_job

            table = run_job(spec, n, args.output, address=args.address, workers=args.workers, pool=args.pool,
                            on_workers=lambda k: bar.set_postfix(workers=k), **common)
    print(f"{args.output}: {table.n_samples} draws, {table.n_distinct} distinct functions (spec {spec.spec_id})")
    if spec.training is not None:
        print(f"{table.n_failed} of {table.n_attempts} trainings did not reach zero training error: not counted "
              "(the table records them as n_failed)")
    return 0
