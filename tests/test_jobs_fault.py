"""A node lost mid-job: Ray's own multi-node test cluster (ray.cluster_utils.Cluster) on this
machine, a head without CPUs and two one-CPU worker nodes. One worker node is killed
while its block is running; the job completes on the node left (tasks retried by Ray; an
actor pool requeues the dead actor's blocks), and the table is byte-identical to an
uninterrupted in-process run."""

from __future__ import annotations

import time

import pytest

from volume.runner import run_local
from volume.spec import FCN, BooleanCube, ExperimentSpec, Prior
from volume.table import FrequencyTable

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    from volume.jobs import import_ray

    ray = import_ray()  # every node on 127.0.0.1
    from ray.cluster_utils import Cluster

    # Health checks every 0.5 s: the GCS declares a killed node dead in ~1.5 s instead of ~15 s
    # (Ray's default), so the retried block is not offered to the dead node for long.
    fast_health = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": fast_health})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]  # tests remove and add worker nodes
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield ray, c, workers
    ray.shutdown()
    c.shutdown()


@pytest.mark.parametrize("pool", ["tasks", "actors"])
def test_node_removed_mid_job(cluster, tmp_path, pool):
    from volume.jobs import run_job

    ray, c, workers = cluster
    if len(workers) < 2:  # the previous case removed one: bring the cluster back to two workers
        workers.append(c.add_node(num_cpus=1))
        c.wait_for_nodes()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    spec = ExperimentSpec(architecture=FCN(hidden=(40, 40)), prior=Prior(sigma_w=1.0, sigma_b=0.1),
                          inputs=BooleanCube(n=7), seed=5, block_size=1024, name="fault-test")
    n = 40 * spec.block_size
    out, ref = tmp_path / "job.h5", tmp_path / "ref.h5"
    run_local(spec, n, ref)  # the uninterrupted run
    counted: list[int] = []
    workers_seen: list[int] = []

    def on_block(draws: int) -> None:
        counted.append(draws)
        if len(counted) == 4:  # both nodes are busy with a call each: kill one of them now
            c.remove_node(workers.pop(1), allow_graceful=False)

    table = run_job(spec, n, out, pool=pool, checkpoint_seconds=0.5, on_block=on_block,
                    on_workers=workers_seen.append)
    deadline = time.monotonic() + 30  # the GCS marks the killed node dead within a few health checks
    while len([nd for nd in ray.nodes() if nd["Alive"]]) != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len([nd for nd in ray.nodes() if nd["Alive"]]) == 2  # the node really was lost
    assert workers_seen[0] == 2
    assert sum(counted) == n  # every block counted once (on_block(draws) per group of blocks)
    assert table.blocks.tolist() == list(range(40))
    assert FrequencyTable.load(out) == table
    assert out.read_bytes() == ref.read_bytes()
