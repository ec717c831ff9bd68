import shutil
from pathlib import Path

import pytest

from support.repo import HELM, HELM3, TOOLS


def pytest_sessionstart(session):
    missing = [tool for tool in (HELM, HELM3) if not Path(tool).exists()]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run scripts/setup first")


def pytest_collection_modifyitems(config, items):
    """The tests marked gitops run last, in their order: they need Flux and Argo CD, which scripts/cluster up builds
    and deploys in the background while everything else runs."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("gitops") is not None)


@pytest.fixture(scope="session")
def tool():
    """Path of a pinned tool in .tools/bin; fails (not skips) when setup did not install it."""
    def path(name: str) -> str:
        found = TOOLS / name
        assert found.exists() or shutil.which(name), f"{name} is not installed: run scripts/setup"
        return str(found) if found.exists() else shutil.which(name)
    return path
