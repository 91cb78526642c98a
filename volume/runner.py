"""Running a sampling job in this process: which blocks a job needs, opening or
creating its output table, and folding counted blocks into it with periodic atomic
checkpoints. ``volume.jobs`` distributes the same blocks over Ray and reuses this
bookkeeping.

A job is (spec, n_draws, output table). It needs blocks 0 .. ceil(n_draws / block_size) - 1;
the blocks the output table already records are not drawn again, so rerunning a job
resumes it, and asking for more draws extends the table.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from glob import escape as glob_escape
from pathlib import Path
from typing import Callable

import numpy as np

from volume.checks import output_path, positive_int
from volume.errors import TableError, VolumeError
from volume.spec import RANDOM_STREAM_VERSION, ExperimentSpec
from volume.table import FrequencyTable, stream_mismatch
from volume.threads import torch_threads


class JobCancelled(VolumeError):
    """A job was cancelled (``stop()`` became true); the blocks counted before are saved."""


def block_source(spec: ExperimentSpec, *, sub_batch: int | None = None, device: str = "cpu"):
    """What draws the blocks of ``spec``: a prior :class:`~volume.sampler.Sampler`, or for a
    spec with a ``training`` section a :class:`~volume.train.TrainingRun` (each draw is a
    prior initialisation trained to zero error; the table holds the functions found).
    Both have ``keys(block)``; building one loads the inputs, so bad data fails here."""
    if spec.training is not None:
        from volume.train import TrainingRun

        return TrainingRun(spec)
    from volume.sampler import Sampler

    kwargs = {"device": device} if sub_batch is None else {"device": device, "sub_batch": sub_batch}
    return Sampler(spec, **kwargs)


def blocks_needed(spec: ExperimentSpec, n_draws: int) -> list[int]:
    positive_int(n_draws, "number of draws (-n)")
    return list(range(math.ceil(n_draws / spec.block_size)))


def open_table(spec: ExperimentSpec, path: str | Path | None) -> FrequencyTable:
    """The table at ``path`` if it exists (it must hold the same spec), else an empty one."""
    if path is None or not Path(path).exists():
        return FrequencyTable.empty(spec)
    table = FrequencyTable.load(path)
    if table.random_stream != RANDOM_STREAM_VERSION:
        raise TableError(f"output table {str(path)!r}: " + stream_mismatch(table.random_stream, RANDOM_STREAM_VERSION)
                         + "; it is left unchanged")
    if table.spec_id != spec.spec_id:
        raise TableError(
            f"output table {str(path)!r} holds spec {table.spec_id} ({table.spec.name or 'unnamed'}), not this spec "
            f"({spec.spec_id}): choose another output path, or the spec the table was made with "
            f"(`volume info {path}` shows it); it is left unchanged"
        )
    return table


def missing_blocks(table: FrequencyTable, spec: ExperimentSpec, n_draws: int) -> list[int]:
    have = set(table.blocks.tolist())
    return [b for b in blocks_needed(spec, n_draws) if b not in have]


class BlockAccumulator:
    """Collects counted blocks and folds them into the table, saving atomically at most
    every ``checkpoint_seconds`` (and at ``flush``). Blocks already in the table are refused.

    Folding is log-structured: the counted blocks form a stack of sorted runs, and a new run
    is merged with the run below it while that one holds at most ``MERGE_RATIO`` times as many
    keys, so run sizes grow geometrically and each key takes part in O(log U) linear merges:
    O(U log U) work over a job, where folding each block (or each checkpoint's blocks) into the
    whole table costs O(U) every time, quadratic over a long job. A checkpoint merges the stack
    into one table (linear: the runs' sizes are geometric) and saves it; writing a table of tens
    of millions of functions takes seconds, so the interval grows to ``SAVE_DUTY`` times the last
    checkpoint's duration (the process folding blocks spends at most ~1/SAVE_DUTY of its time on
    checkpoints, and it shares the machine with the workers). Without a path nothing is saved and the stack is merged once, at ``flush``.
    Whatever the order or grouping of the merges, the table is the multiset union of the blocks
    (``FrequencyTable.merge``), so the result does not depend on them."""

    SAVE_DUTY = 20
    MERGE_RATIO = 2

    def __init__(self, table: FrequencyTable, path: str | Path | None, checkpoint_seconds: float = 30.0,
                 clock=time.monotonic):
        self.table = table
        self.clock = clock  # seconds; a benchmark injects simulated time (benchmarks/driver_fold.py)
        self.path = path
        self.checkpoint_seconds = checkpoint_seconds
        self._interval = checkpoint_seconds
        self._runs: list[FrequencyTable] = [table]  # sizes decrease up the stack (roughly geometrically)
        self._last = clock()

    def add(self, block: int, keys: np.ndarray) -> None:
        self.add_table(FrequencyTable.from_keys(self.table.spec, keys, [block]))

    def add_table(self, counted: FrequencyTable) -> None:
        """Fold a table of already counted blocks (e.g. one a Ray worker counted)."""
        runs = self._runs
        runs.append(counted)
        while len(runs) > 1 and runs[-2].n_distinct <= self.MERGE_RATIO * runs[-1].n_distinct:
            top = runs.pop()
            runs[-1] = runs[-1].merge(top)
        if self.path is not None and self.clock() - self._last >= self._interval:
            self.flush()

    def flush(self) -> FrequencyTable:
        start = self.clock()
        runs = self._runs
        while len(runs) > 1:  # smallest first: the merges cost about twice the table's size
            top = runs.pop()
            runs[-1] = runs[-1].merge(top)
        self.table = runs[0]
        if self.path is not None:
            self.table.save(self.path)
        self._last = self.clock()
        self._interval = max(self.checkpoint_seconds, self.SAVE_DUTY * (self._last - start))
        return self.table


@contextlib.contextmanager
def table_lock(path: str | Path | None):
    """Hold an exclusive lock on ``PATH.lock`` while a job writes the table at ``path``, so
    that two jobs never fold blocks into the same file (each would overwrite the other's
    checkpoints). The lock is released when the holder exits, even if it is killed; on a
    clean exit the lock file is removed (while still held, and a waiter that opened the old
    file checks the inode and retries, so two holders can never overlap). The
    new holder first removes the temporaries a killed writer left behind."""
    if path is None:
        yield
        return
    import fcntl

    lock_path = Path(str(output_path(path, "output table")) + ".lock")
    while True:
        fh = open(lock_path, "a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise TableError(f"another job is writing {str(path)!r} (it holds {str(lock_path)!r}): "
                             "wait for it to finish, or choose another output path") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.fstat(fh.fileno()).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    remove_stale_temporaries(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # removed while still locked, so no .lock file stays behind
        fh.close()


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove ``NAME.h5.XXXX.tmp`` files that a writer killed mid-save left next to the table
    at ``path`` (``volume.h5io.atomic_h5`` names its temporaries so). Called by the holder of
    the table's lock, so no live writer of this table owns one of them."""
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f"{glob_escape(p.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def run_local(spec: ExperimentSpec, n_draws: int, out: str | Path | None = None, *,
              sub_batch: int | None = None, device: str = "cpu", checkpoint_seconds: float = 30.0,
              on_block: Callable[[int], None] | None = None,
              stop: Callable[[], bool] | None = None) -> FrequencyTable:
    """Draw the missing blocks of a job in this process and return the table (saved to
    ``out`` if given). ``on_block(draws)`` is called after each block (progress bars);
    ``stop()`` returning true cancels the job between blocks (JobCancelled, after the
    counted blocks are saved)."""
    if out is not None:
        output_path(out, "output table")  # before drawing anything
    table = open_table(spec, out)
    todo = missing_blocks(table, spec, n_draws)
    sampler = block_source(spec, sub_batch=sub_batch, device=device) if todo else None
    acc = BlockAccumulator(table, out, checkpoint_seconds)
    try:
        with torch_threads(1):  # one thread is as fast as two here, and much faster on a busy machine
            for b in todo:
                if stop is not None and stop():
                    raise JobCancelled("the job was cancelled; the blocks counted so far are saved")
                acc.add(b, sampler.keys(b))
                if on_block is not None:
                    on_block(spec.block_size)
    finally:
        table = acc.flush()
    return table


def progress_bar(total: int, initial: int, enabled: bool = True, desc: str = "sampling"):
    """A tqdm bar over draws (rate in draws/s and ETA), or a no-op when disabled."""
    from tqdm.auto import tqdm  # a widget in Jupyter, text in a terminal

    return tqdm(total=total, initial=initial, unit="draw", unit_scale=True, desc=desc, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)

