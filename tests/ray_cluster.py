"""A local two-node Ray cluster for the Ray tests (rollout workers and trainer processes)."""
from __future__ import annotations

import os


def two_node_ray_cluster(head_resources: dict, other_resources: dict):
    """A local two-node Ray cluster (1 CPU each, the given custom resources), this process
    connected to it; a generator for module-scoped fixtures (yields the cluster, then shuts down)."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": head_resources,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources=other_resources)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
