"""An upgrade from the previous released chart version to this one keeps the relay: the same Tailscale node (key and
tailnet addresses), the relay settings in effect, and the LAN device relaying through it.

The previous version is packaged from git: the newest commit whose chart/Chart.yaml has another version than the
working tree's (its release, had it been tagged). It is installed with its own defaults plus the test cluster's
settings, written in its own values (0.3.0 has no agent: its relay-settings sidecar and hook ran hook.image, a shell
with kubectl and curl, which the tests' toolbox image is), then upgraded to the working tree with the current
chart's values.
"""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest
import yaml

from support.cluster import cluster_values, on_cluster
from support.release import Release
from support.repo import CHART, CHART_NAME, HELM, REPO
from support.tailnet import relay_side, relayed

pytestmark = pytest.mark.integration

# the write-up's setup (chart/ci/seed-values.yaml) on the test cluster, which 0.3.0 takes as well
SEED = on_cluster("seed")
PORT = SEED["relay"]["port"]


def previous_version_commit() -> tuple[str, str]:
    """(commit, chart version) of the newest commit whose chart version differs from the working tree's."""
    current = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    commits = subprocess.run(
        ["git", "log", "--format=%H", "--", "chart/Chart.yaml"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for commit in commits:
        chart = yaml.safe_load(
            subprocess.run(
                ["git", "show", f"{commit}:chart/Chart.yaml"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
        )
        if chart["version"] != current:
            return commit, chart["version"]
    pytest.fail(f"no commit in this clone's history has a chart version other than {current} (a shallow clone?)")


@pytest.fixture(scope="module")
def previous_package(tmp_path_factory):
    commit, version = previous_version_commit()
    out = tmp_path_factory.mktemp("previous")
    archive = out / "chart.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, "chart"], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    result = subprocess.run(
        [HELM, "package", str(out / "chart"), "--destination", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return out / f"{CHART_NAME}-{version}.tgz", version


def previous_cluster_values() -> dict:
    """The test cluster's values in the previous chart's words: hook.image (a shell, kubectl and curl) for the
    sidecar and hook it had instead of the agent."""
    values = cluster_values()
    del values["agent"]
    repository, tag = os.environ["TOOLBOX_IMAGE"].rsplit(":", 1)
    values["hook"] = {**values["hook"], "image": {"repository": repository, "tag": tag}}
    return values


def test_an_upgrade_from_the_previous_version_keeps_the_node_and_the_path(
    kube_api, namespace, tailnet, previous_package
):
    package, version = previous_package
    old = Release(kube_api, namespace, chart=str(package), base_values=previous_cluster_values)
    old.install(SEED)
    pod = old.pod(0)
    endpoints = old.service_endpoints(0, PORT)
    tailnet.ping_until(relayed(endpoints), 180, f"the {version} relay at {sorted(endpoints)}", relay_side(old))
    identity = old.node_identity(pod)
    secrets = old.state_identities()

    new = Release(kube_api, namespace)
    new.upgrade(SEED)
    new.wait_pod_ready(pod)
    assert new.node_identity(pod) == identity, (
        f"the upgrade from {version} made the relay a new Tailscale node (key, tailnet addresses)"
    )
    assert new.state_identities() == secrets, "the upgrade changed the identity in the state Secrets"
    assert new.relay_settings(pod) == (str(PORT), new.service_endpoints(0, PORT)), (
        "after the upgrade the relay should have the release's port and its Service's addresses"
    )
    new.test()
    tailnet.ping_until(relayed(new.service_endpoints(0, PORT)), 180, "the upgraded relay", relay_side(new))
