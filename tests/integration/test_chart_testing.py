"""chart-testing's `ct install`, as external-dns's CI runs it: the chart installed once per chart/ci/*-values.yaml, each
in a namespace of its own, `helm test` run, then uninstalled. The test cluster's images, key and login server go over
every variant through one values file (support.cluster.overlay), passed with ct's --helm-extra-set-args."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from support.cluster import control_plane_node, overlay
from support.repo import CHART, REPO, TOOLS
from support.values import ci_value_names

pytestmark = pytest.mark.integration


@pytest.fixture
def kubectl_dir(kube_api, tmp_path):
    """A directory with kubectl, which ct runs to create and delete its namespaces: the cluster's own, copied from its
    control-plane node (the offline node image builds it from the Go module proxy with the rest of Kubernetes)."""
    node = control_plane_node()
    out = tmp_path / "bin"
    out.mkdir()
    copied = subprocess.run(
        ["docker", "cp", f"{node}:/usr/bin/kubectl", str(out / "kubectl")], capture_output=True, text=True, timeout=60
    )
    assert copied.returncode == 0, f"could not copy kubectl from node {node}: {copied.stderr}"
    return out


def test_ct_install_installs_every_variant_and_its_helm_test_passes(tool, kubectl_dir, tmp_path):
    values = tmp_path / "cluster-values.yaml"
    values.write_text(yaml.safe_dump(overlay()))
    result = subprocess.run(
        [
            tool("ct"),
            "install",
            "--config",
            "ct.yaml",
            "--charts",
            str(CHART.relative_to(REPO)),
            f"--helm-extra-set-args=--values={values}",
            "--helm-extra-args=--timeout=300s",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PATH": f"{TOOLS}:{kubectl_dir}:{os.environ['PATH']}"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"ct install failed:\n{output[-6000:]}"
    assert "All charts installed successfully" in output, output[-3000:]
    for name in ci_value_names():
        assert f"{name}-values.yaml" in output, f"ct install did not install the variant {name}:\n{output[-3000:]}"
