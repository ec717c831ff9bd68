"""The real helm binary (Helm 4 by default, Helm 3 on request), with values passed as a file."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from support.repo import HELM


def run_helm(
    *args: str, values: dict | None = None, helm: str = HELM, timeout: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs helm with ARGS (plus --values for VALUES, written to a temporary file) and returns the result."""
    command = [helm, *args]
    path = None
    if values is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            json.dump(values, handle)
        path = handle.name
        command += ["--values", path]
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HELM_CACHE_HOME": tempfile.gettempdir() + "/helm-cache"},
        )
    finally:
        if path:
            os.unlink(path)
