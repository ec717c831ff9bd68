import shutil
from pathlib import Path

import pytest

from support.background import wait_for_later_tools
from support.repo import HELM, HELM3, TOOLS


def pytest_sessionstart(session):
    missing = [tool for tool in (HELM, HELM3) if not Path(tool).exists()]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run scripts/setup first")


def pytest_collection_modifyitems(config, items):
    """The tests marked later_tools, then those marked gitops, run last, each in their order: they need what scripts
    build in the background while everything else runs (the tools scripts/setup leaves to
    `scripts/install-tools start-later`; Flux and Argo CD, which scripts/cluster up builds and deploys)."""

    def order(item):
        return 2 if item.get_closest_marker("gitops") else 1 if item.get_closest_marker("later_tools") else 0

    items[:] = sorted(items, key=order)


@pytest.fixture(scope="session")
def tool():
    """Path of a pinned tool in .tools/bin; fails (not skips) when setup did not install it. For a tool that
    scripts/install-tools builds in the background, waits for that build first."""

    def path(name: str) -> str:
        wait_for_later_tools(name)
        found = TOOLS / name
        located = str(found) if found.exists() else shutil.which(name)
        assert located, f"{name} is not installed: run scripts/setup"
        return located

    return path
