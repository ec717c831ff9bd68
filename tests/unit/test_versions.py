"""One versions file: the chart, the tools and the tests agree with scripts/versions.env."""

import subprocess

import pytest
import yaml

from support.repo import CHART, HELM, HELM3, versions


def test_chart_app_version_is_the_pinned_tailscale_release():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == versions()["TAILSCALE_VERSION"]
    major, minor, _ = (int(p) for p in chart["appVersion"].split("."))
    assert (major, minor) >= (1, 92), "peer relay static endpoints need Tailscale 1.92 or newer"


@pytest.mark.parametrize("helm, pin", [(HELM, "HELM_VERSION"), (HELM3, "HELM3_VERSION")])
def test_installed_helm_is_the_pinned_one(helm, pin):
    reported = subprocess.run([helm, "version", "--template", "{{.Version}}"], capture_output=True, text=True).stdout
    assert reported == versions()[pin]
    assert reported.startswith("v4." if pin == "HELM_VERSION" else "v3.")
