"""Where things are in this repository, and the versions it pins (scripts/versions.env)."""

from __future__ import annotations

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
