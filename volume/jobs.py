"""Sampling jobs on Ray: the blocks of a job are drawn by a pool of long-lived actors (or
as one Ray task each), counted where they are drawn and folded into one table with
periodic atomic checkpoints. Actors are the default: each keeps its Sampler (inputs,
buffers) and a queue of two calls, so it never waits for the driver between blocks;
benchmarks/RESULTS.md has the measurements. A call draws a group of consecutive blocks
(``GroupSize``: about half a second of work, learnt from the calls that finished), because a
Ray round trip per 25 ms block of boolean7 cost the driver ~1 ms of the CPU the workers share.

A job is (spec, number of draws, output table); its seed is ``spec.seed``. It needs blocks
0 .. ceil(n / block_size) - 1 (``volume.runner.blocks_needed``); the blocks the output
table already records are skipped (``missing_blocks``), so rerunning a job resumes it and
asking for more draws extends it. Block b is a pure function of (spec, b)
(``volume.sampler``), and merging counted blocks is a multiset union, so the table - and
the bytes of the saved file - depend only on the set of blocks counted, never on the
number of workers, the order in which blocks finish, checkpoints or retries.

Fault tolerance:

* A block is counted once: the driver folds it into the table (``BlockAccumulator``),
  which records its id; the checkpoint is an atomic rename, so a killed driver loses at
  most the blocks counted since the last checkpoint and in flight, and a rerun draws
  exactly the blocks the saved table lacks.
* A worker process or node lost mid-job: Ray retries the task (``max_retries``) on the
  nodes left, and rebuilds a lost result from its lineage; in the actor pool a dead
  actor's block goes back to the queue. Either way the block is counted once, when its
  result reaches the driver.
* Two jobs never write the same table at once (``volume.runner.table_lock``).

Ray placement: with no address and no ``RAY_ADDRESS`` in the environment a local instance
is started with ``address="local"`` (never joining a stale cluster) and, through
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, bound to 127.0.0.1; ``address="auto"``,
``"ray://host:10001"`` or ``"host:port"`` join an existing cluster, and under
``ray job submit`` the ``RAY_ADDRESS`` that Ray sets is joined. Ray is imported lazily,
after that choice, because the loopback setting is read when Ray is imported.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from volume.checks import positive_int
from volume.errors import VolumeError
from volume.runner import BlockAccumulator, JobCancelled, block_source, missing_blocks, open_table, table_lock
from volume.spec import ExperimentSpec
from volume.table import FrequencyTable, count_keys

POOLS = ("actors", "tasks")
DEFAULT_POOL = "actors"  # faster in steady state (benchmarks/RESULTS.md); both give the same table
DEFAULT_MAX_RETRIES = 8


# ---- Ray start-up ---------------------------------------------------------------------
def _wants_local(address: str | None) -> bool:
    return address in (None, "local") and not os.environ.get("RAY_ADDRESS")


def is_loopback_address(address: str | None) -> bool:
    """True for a local instance, or a cluster address on 127.0.0.1 / localhost ('auto': the
    address Ray recorded for the latest cluster started on this machine)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address in (None, "local"):
        return True
    if address == "auto":
        recorded = Path("/tmp/ray/ray_current_cluster")
        address = recorded.read_text().strip() if recorded.is_file() else ""
    return is_loopback_host(address.split("://")[-1].rsplit(":", 1)[0])


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback IP addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def import_ray(loopback: bool = True):
    """Import Ray; for an instance on this machine's loopback interface first set
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (read when Ray is imported), so that Ray keeps every
    node and driver on 127.0.0.1 instead of the machine's outward address."""
    if loopback and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster, and disconnect on exit if this call
    connected it (a connection made by the caller is reused and left open).

    ``address=None`` starts a local instance with ``workers`` CPUs (default: all cores),
    or joins ``RAY_ADDRESS`` when it is set (as under ``ray job submit``); ``"auto"``,
    ``"ray://host:port"`` or ``"host:port"`` join an existing cluster.
    """
    if workers is not None:
        positive_int(workers, "workers (--workers)")
    local = _wants_local(address)
    token_auth = False if local else use_token_auth()
    ray = import_ray(is_loopback_address(address))
    if ray.is_initialized():
        yield ray
        return
    target = address or os.environ.get("RAY_ADDRESS")
    handlers = _python_signal_handlers()
    try:
        if local:
            ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        else:
            try:
                _check_reachable(target)
            except ConnectionError as e:
                raise VolumeError(f"cannot connect to the Ray cluster at {target!r}: {e}; start one "
                                  "(`ray start --head`), or leave out --address for a local instance") from None
            ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as e:
        if local:
            raise VolumeError(f"cannot start a local Ray instance: {e}") from None
        raise VolumeError(_refused_message(target, e, token_auth)) from None
    finally:
        _restore_signal_handlers(handlers)
    try:
        yield ray
    finally:
        ray.shutdown()


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def auth_token_available() -> bool:
    """A Ray authentication token is at hand: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token (where `ray start --head` and `ray get-auth-token --generate` put it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser().is_file()


def use_token_auth() -> bool:
    """Before joining a cluster: Ray heads (2.60) started with `ray start --head` require token
    authentication whenever a token exists, while a driver's mode defaults to 'disabled', so the
    driver is refused. As Ray's own CLI does, turn token mode on for this process when
    RAY_AUTH_MODE is unset and a token is available. True if token mode is on."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None:
        return mode.lower() == "token"
    if not auth_token_available():
        return False
    os.environ[AUTH_MODE_ENV] = "token"
    if "ray" in sys.modules:  # Ray caches its configuration: refresh it (as ray's _enable_token_auth does)
        with contextlib.suppress(Exception):
            from ray._raylet import Config

            Config.initialize("")
    return True


def _refused_message(target: str | None, error: Exception, token_auth: bool) -> str:
    """Something answers at ``target`` (checked first) but Ray refused or failed the connection."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if token_auth:
        auth = ("this process used token authentication (RAY_AUTH_MODE=token): check that its token (~/.ray/auth_token, "
                "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) is the cluster's (`ray get-auth-token` on the head prints it)")
    else:
        auth = ("if the cluster uses token authentication (Ray 2.60's `ray start --head` turns it on when a token exists), set "
                "RAY_AUTH_MODE=token and make its token available here (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                "RAY_AUTH_TOKEN)")
    return (f"cannot join the Ray cluster at {target!r}: a server answers there but the connection failed "
            f"({first}); {auth}")


_SIGNALS = ("SIGTERM", "SIGINT")


def _python_signal_handlers() -> dict:
    """The Python-level handlers of SIGTERM and SIGINT (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(getattr(signal, s)) for s in _SIGNALS if callable(signal.getsignal(getattr(signal, s)))}


def _restore_signal_handlers(handlers: dict) -> None:
    """Reinstall the caller's handlers after ``ray.init``: Ray's driver installs a C++ handler
    for SIGTERM that logs and aborts the process, which would skip the checkpoint that
    ``volume sample`` writes on SIGTERM (`kill`, `ray job stop`, batch schedulers)."""
    import signal

    for name, handler in handlers.items():
        signal.signal(getattr(signal, name), handler)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at a HOST:PORT address."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"nothing answers at {address} ({e})") from None


def cluster_slots(ray, device: str = "cpu") -> int:
    """Blocks the cluster can draw at once now: its CPUs (GPUs for a CUDA device); this
    changes when nodes join or leave."""
    return max(1, int(ray.cluster_resources().get("GPU" if device.startswith("cuda") else "CPU", 1)))


# ---- the work of one block, in a Ray worker -------------------------------------------
_SAMPLERS: dict[tuple, Any] = {}


def worker_sampler(spec: ExperimentSpec, sub_batch: int | None = None, device: str = "cpu") -> Any:
    """The block source of ``spec`` (a Sampler, or a TrainingRun for optimizer tables) kept in this worker process between tasks (inputs loaded and
    layer shapes computed once), with PyTorch limited to one thread: Ray runs one task
    per CPU, so more threads would only contend."""
    import torch

    torch.set_num_threads(1)
    key = (spec.spec_id, spec.inputs, sub_batch, device)
    sampler = _SAMPLERS.get(key)
    if sampler is None:
        _SAMPLERS.clear()  # one spec at a time: keep a worker's memory bounded
        sampler = _SAMPLERS[key] = block_source(spec, sub_batch=sub_batch, device=device)
    return sampler


def count_group(spec: ExperimentSpec, blocks: tuple[int, ...], sub_batch: int | None = None,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Draw the blocks of ``blocks`` and count them together: (sorted unique keys, counts) of
    their union. One call per group instead of per block: a block of boolean7 takes ~25 ms, and a
    Ray round trip costs the driver about a millisecond of the CPU the workers share."""
    sampler = worker_sampler(spec, sub_batch, device)
    if len(blocks) == 1:
        return count_keys(sampler.keys(blocks[0]))
    return count_keys(np.concatenate([sampler.keys(b) for b in blocks]))


class BlockCounter:
    """Actor form of :func:`count_group`: a long-lived process holding one Sampler."""

    def __init__(self, spec: ExperimentSpec, sub_batch: int | None = None, device: str = "cpu"):
        self.args = (spec, sub_batch, device)
        worker_sampler(*self.args)

    def count(self, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        spec, sub_batch, device = self.args
        return count_group(spec, blocks, sub_batch, device)


class GroupSize:
    """How many blocks one Ray call draws: about ``target_seconds`` of a worker's time, learnt
    from the calls that finished (seconds per block = wall time per finished block x workers),
    between 1 and ``max_blocks``. The first calls take one block each. The grouping changes
    only how the blocks travel: the table is the union of the blocks whatever the groups."""

    def __init__(self, target_seconds: float = 0.5, max_blocks: int = 64, clock=time.monotonic):
        self.target = target_seconds
        self.max_blocks = max_blocks
        self.clock = clock
        self.first: float | None = None  # when the first call finished (start-up not counted)
        self.done = 0  # blocks finished since then

    def finished(self, n_blocks: int) -> None:
        if self.first is None:
            self.first = self.clock()
        else:
            self.done += n_blocks

    def size(self, workers: int) -> int:
        workers = max(workers, 1)
        if self.first is None or self.done < 2 * workers:
            return 1
        per_block = (self.clock() - self.first) * workers / self.done
        return int(min(self.max_blocks, max(1, self.target // max(per_block, 1e-9))))


def _get(ray, ref):
    """ray.get that re-raises a user error (VolumeError) from a task as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, VolumeError):
            raise e.cause from None
        raise


# ---- dispatch -----------------------------------------------------------------------
class _TaskPool:
    """One Ray task per group of blocks, ``cap`` running at once (the cap follows the cluster's CPUs
    unless fixed). When the cap is the whole cluster, ``depth`` tasks per worker are
    submitted, so that a worker starts its next block without waiting for the driver (Ray
    queues the extra tasks until a CPU is free); a cap below the cluster's CPUs is kept
    exactly. Ray retries a task whose worker or node is lost, so a failure that reaches the
    driver is final."""

    def __init__(self, ray, spec_ref, sub_batch, device, max_retries, cap, whole_cluster: bool, depth: int = 2):
        resources = {"num_gpus": 1} if device.startswith("cuda") else {"num_cpus": 1}
        self.fn = ray.remote(count_group).options(max_retries=max_retries, retry_exceptions=False, **resources)
        self.args = (sub_batch, device)
        self.spec_ref = spec_ref
        self.cap = cap
        self.depth = depth if whole_cluster else 1
        self.inflight: dict = {}  # ref -> group of blocks

    def has_room(self) -> bool:
        return len(self.inflight) < self.cap * self.depth

    def resize(self, slots: int) -> int:
        self.cap = slots
        return self.cap

    def submit(self, group: tuple[int, ...]) -> None:
        self.inflight[self.fn.remote(self.spec_ref, group, *self.args)] = group

    def take(self, ref) -> tuple[tuple[int, ...], str | None]:
        """(group, why it was lost or None): lost blocks go back to the queue (Ray itself
        retries a task whose worker died, so a task's blocks are never lost here)."""
        return self.inflight.pop(ref), None

    def close(self, ray) -> None:  # interrupted or failed: stop the blocks still running
        for ref in self.inflight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


class _ActorPool:
    """Long-lived actors, each holding its Sampler, with up to ``depth`` blocks queued on
    each so that an actor starts its next block without waiting for the driver. A dead
    actor is dropped and its blocks go back to the queue. Actors started later (for CPUs
    that joined) get blocks only once they are placed and running (``__ray_ready__``): the
    cluster's CPU count can still include a node that has just died, and an actor that can
    never be placed must not hold blocks for ever."""

    def __init__(self, ray, spec_ref, sub_batch, device, size, depth: int = 2):
        resources = {"num_gpus": 1} if device.startswith("cuda") else {"num_cpus": 1}
        self.ray = ray
        self.cls = ray.remote(BlockCounter).options(max_restarts=0, **resources)
        self.args = (spec_ref, sub_batch, device)
        self.depth = depth
        self.load = {self.cls.remote(*self.args): 0 for _ in range(size)}  # actor -> blocks queued on it
        self.starting: dict = {}  # ready ref -> actor not yet known to be placed
        self.inflight: dict = {}  # ref -> (group of blocks, actor)
        self.cap = size

    def _promote(self) -> None:
        """Move started actors that are now running into the pool."""
        if not self.starting:
            return
        ready, _ = self.ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            actor = self.starting.pop(ref)
            try:
                self.ray.get(ref)
            except Exception:  # died before it started (its node was lost): forget it
                continue
            self.load[actor] = 0

    def has_room(self) -> bool:
        self._promote()
        return not self.load or min(self.load.values()) < self.depth

    def resize(self, slots: int) -> int:
        """Start actors for CPUs that joined; lost ones are dropped as their calls fail."""
        self._promote()
        for _ in range(slots - len(self.load) - len(self.starting)):
            actor = self.cls.remote(*self.args)
            self.starting[actor.__ray_ready__.remote()] = actor
        self.cap = len(self.load) + len(self.starting)
        return self.cap

    def submit(self, group: tuple[int, ...]) -> None:
        if not self.load:  # every actor died: start one (it waits for a CPU like a task would)
            self.load[self.cls.remote(*self.args)] = 0
        actor = min(self.load, key=self.load.get)
        self.load[actor] += 1
        self.inflight[actor.count.remote(group)] = (group, actor)

    def take(self, ref) -> tuple[tuple[int, ...], str | None]:
        block, actor = self.inflight.pop(ref)
        try:
            self.ray.get(ref, timeout=0)
        except self.ray.exceptions.RayActorError as e:
            self.load.pop(actor, None)
            return block, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else 'the actor died'}"
        except Exception:  # a task error: reported when the driver fetches the result
            pass
        if actor in self.load:
            self.load[actor] -= 1
        return block, None

    def close(self, ray) -> None:
        for actor in [*self.load, *self.starting.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _count_blocks(ray, spec: ExperimentSpec, todo: list[int], acc: BlockAccumulator, *, workers: int | None,
                  pool: str, sub_batch: int | None, device: str, max_retries: int,
                  on_block: Callable[[int], None] | None, on_workers: Callable[[int], None] | None,
                  stop: Callable[[], bool] | None = None) -> None:
    """Count ``todo`` into ``acc``. A block whose worker dies goes back to the queue, at most
    ``max_retries`` times; then the job fails with the reason (a worker killed for memory
    again and again must not leave a job running for ever). ``stop()`` true: the job is
    cancelled (JobCancelled) within about a second."""
    spec_ref = ray.put(spec)
    lost_count: dict[int, int] = {}
    slots = cluster_slots(ray, device)
    cap = workers or slots
    if pool == "tasks":
        runner: Any = _TaskPool(ray, spec_ref, sub_batch, device, max_retries, cap, whole_cluster=cap >= slots)
    else:
        runner = _ActorPool(ray, spec_ref, sub_batch, device, min(cap, len(todo)))
    queue = deque(todo)
    if on_workers is not None:
        on_workers(runner.cap)
    last_check = time.monotonic()
    grouping = GroupSize()
    try:
        while queue or runner.inflight:
            if stop is not None and stop():
                raise JobCancelled("the job was cancelled; the blocks counted so far are saved")
            while queue and runner.has_room():
                # never more than a fair share of what is left, so the last calls stay balanced
                n = min(grouping.size(runner.cap), max(1, len(queue) // max(runner.cap, 1)))
                runner.submit(tuple(queue.popleft() for _ in range(min(n, len(queue)))))
            ready, _ = ray.wait(list(runner.inflight), num_returns=1, timeout=1.0)
            if ready:  # also take whatever else is ready now
                ready, _ = ray.wait(list(runner.inflight), num_returns=len(runner.inflight), timeout=0)
            for ref in ready:
                group, lost = runner.take(ref)
                if lost:
                    for b in group:
                        lost_count[b] = lost_count.get(b, 0) + 1
                        if lost_count[b] > max_retries:
                            raise VolumeError(f"block {b} lost its worker {lost_count[b]} times (last: {lost}); the "
                                              "worker process dies drawing it (out of memory?): use a smaller network "
                                              "or block_size; the blocks counted so far are saved")
                    queue.extendleft(reversed(group))
                    continue
                keys, counts = _get(ray, ref)
                acc.add_table(FrequencyTable(spec, keys, counts, list(group)))
                grouping.finished(len(group))
                if on_block is not None:
                    on_block(spec.block_size * len(group))
            if workers is None and queue and time.monotonic() - last_check > 2.0:  # follow nodes joining/leaving
                last_check = time.monotonic()
                before = runner.cap
                if runner.resize(cluster_slots(ray, device)) != before and on_workers is not None:
                    on_workers(runner.cap)
    finally:
        runner.close(ray)


def run_job(spec: ExperimentSpec, n_draws: int, out: str | Path | None = None, *, address: str | None = None,
            workers: int | None = None, pool: str = DEFAULT_POOL, sub_batch: int | None = None, device: str = "cpu",
            checkpoint_seconds: float = 30.0, max_retries: int = DEFAULT_MAX_RETRIES,
            on_block: Callable[[int], None] | None = None,
            on_workers: Callable[[int], None] | None = None,
            stop: Callable[[], bool] | None = None) -> FrequencyTable:
    """Draw the blocks of (spec, n_draws) that the table at ``out`` lacks, on Ray, and return
    the table (saved to ``out`` if given, at least every ``checkpoint_seconds`` and at the end,
    also when interrupted).

    ``workers`` is the number of blocks drawn at once (default: the cluster's CPUs, followed
    as nodes come and go); with a local instance it is also its number of CPUs. ``pool`` is
    'actors' (long-lived actors, each keeping its Sampler and a queue of two calls: no
    driver round trip between blocks) or 'tasks' (one Ray task per block, retried by Ray);
    both give the same table.
    ``on_block(draws)`` is called after each counted group of blocks and ``on_workers(n)`` when the
    number of workers changes (progress bars). ``max_retries``: how often a block whose worker
    died is drawn again before the job fails. ``stop()`` returning true cancels the job
    (:class:`~volume.runner.JobCancelled`, raised after the counted blocks are saved).
    """
    if pool not in POOLS:
        raise VolumeError(f"pool = {pool!r} is invalid: use one of {', '.join(POOLS)}")
    with table_lock(out):
        table = open_table(spec, out)
        todo = missing_blocks(table, spec, n_draws)
        if not todo:
            return table
        block_source(spec, sub_batch=sub_batch, device=device)  # bad data or device: fail before Ray starts
        with ray_session(address, workers) as ray:
            acc = BlockAccumulator(table, out, checkpoint_seconds)
            try:
                _count_blocks(ray, spec, todo, acc, workers=workers, pool=pool, sub_batch=sub_batch, device=device,
                              max_retries=max_retries, on_block=on_block, on_workers=on_workers, stop=stop)
            finally:
                table = acc.flush()
    return table


# ---- a generic map ------------------------------------------------------------------
def _call_single_threaded(func: Callable[[Any], Any], item: Any) -> Any:
    import torch

    torch.set_num_threads(1)
    return func(item)


def ray_map(func: Callable[[Any], Any], items: Iterable[Any], address: str | None = None, *,
            num_cpus: float = 1, max_retries: int = DEFAULT_MAX_RETRIES) -> list:
    """``[func(item) for item in items]`` with each call a Ray task (retried if its worker is
    lost), results in the order of ``items``. ``func`` must be picklable (a module-level
    function or a picklable callable object); it is shipped once. Uses the caller's Ray
    connection if there is one, else :func:`ray_session` (a local instance by default, started
    and stopped by this call: to map repeatedly, call it inside ``with ray_session():``)."""
    items = list(items)
    if not items:
        return []
    with ray_session(address) as ray:
        remote = ray.remote(_call_single_threaded).options(num_cpus=num_cpus, max_retries=max_retries,
                                                           retry_exceptions=False)
        func_ref = ray.put(func)
        refs = [remote.remote(func_ref, item) for item in items]
        return [_get(ray, ref) for ref in refs]
