"""The functional tests' shared cloud: one fake-driver cloud for the test files of
tests/control that need only the default configuration (they kill no daemon,
change nothing cloud-wide and do not count on being alone on it). Each test
keeps to its own projects and names. A file that needs its own settings, or
stops etcd or the API, starts its own cloud with start_cloud()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import start_cloud, stop_cloud


@pytest.fixture(scope="package")
def fake_cloud_and_store() -> Iterator[tuple]:
    """Started by the first test that asks for it, stopped after the last test
    of tests/control (package scope), not at the end of the whole run."""
    cloud, store = start_cloud("shared-fake", agent_settings={"driver": "fake"})
    yield cloud, store
    stop_cloud(cloud, "shared-fake")


def delete_all_instances(client) -> None:
    """Delete every instance the client's project has, and wait until they are
    gone: what a module leaves on the shared cloud takes no host's room."""
    from cloudapi.v1 import compute_pb2 as pb

    instances = client.instances.ListInstances(pb.ListInstancesRequest()).instances
    for instance in instances:
        client.instances.DeleteInstance(pb.DeleteInstanceRequest(id_or_name=instance.id))
    for instance in instances:
        client.wait_gone(instance.id)
