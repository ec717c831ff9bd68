"""Shell scripts (everything under scripts/ and .ci/) pass shellcheck."""

import subprocess

import pytest

from support.repo import REPO

SHELLCHECK = str(REPO / ".venv" / "bin" / "shellcheck")


def shell_scripts():
    candidates = [REPO / ".ci" / "run", *sorted((REPO / "scripts").rglob("*"))]
    for path in candidates:
        if path.is_file() and path.read_bytes()[:2] == b"#!" and b"sh" in path.read_bytes().split(b"\n", 1)[0]:
            yield path


@pytest.mark.parametrize("script", list(shell_scripts()), ids=lambda p: str(p.relative_to(REPO)))
def test_script_passes_shellcheck(script):
    result = subprocess.run([SHELLCHECK, "-x", "-P", "SCRIPTDIR", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
