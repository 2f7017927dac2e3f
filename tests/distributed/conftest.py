"""The two-node Ray cluster of the ``--ray`` tests, started once per session (~15 s on two
cores) and shared by every module here: a head and a second node on this machine
(``ray.cluster_utils.Cluster``), one CPU and a 200 MB object store each, loopback only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# before Ray is imported: no usage report, and this node's address is 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 200 * 1024**2}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """A head and a second node, one CPU each: two workers land on two nodes."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        c.add_node(**NODE)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
