"""Where things are in this repository, and the versions it pins (scripts/versions.env)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "chart"
TOOLS = REPO / ".tools" / "bin"
HELM = str(TOOLS / "helm")
HELM3 = str(TOOLS / "helm3")
# the chart's name, as users install it (Chart.yaml's name; tests/unit/test_package.py holds them equal)
CHART_NAME = "tailscale-peer-relay"


def versions() -> dict[str, str]:
    """scripts/versions.env as a dict."""
    pins = {}
    for line in (REPO / "scripts" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def benchmark_environment() -> dict[str, object]:
    """What a benchmark's results record about where they were measured: the day, this machine's cores and kernel,
    and the pinned Tailscale, Headscale and Kubernetes."""
    pins = versions()
    return {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "tailscale": pins["TAILSCALE_VERSION"],
        "headscale": pins["HEADSCALE_VERSION"],
        "kubernetes": pins["KUBERNETES_VERSION"],
    }
