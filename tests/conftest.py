import shutil
from pathlib import Path

import pytest

from support.repo import HELM, HELM3, TOOLS


def pytest_sessionstart(session):
    missing = [tool for tool in (HELM, HELM3) if not Path(tool).exists()]
    if missing:
        raise pytest.UsageError(f"missing {', '.join(missing)}: run scripts/setup first")


@pytest.fixture(scope="session")
def tool():
    """Path of a pinned tool in .tools/bin; fails (not skips) when setup did not install it."""
    def path(name: str) -> str:
        found = TOOLS / name
        assert found.exists() or shutil.which(name), f"{name} is not installed: run scripts/setup"
        return str(found) if found.exists() else shutil.which(name)
    return path
