"""Shell scripts (everything under scripts/ and .ci/) pass shellcheck."""

import re
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


def make_targets() -> list[str]:
    return re.findall(r"^([a-z-]+):.*## ", (REPO / "Makefile").read_text(), re.M)


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_runs_scripts_that_exist(target):
    # make -n prints what the target would run, without running it
    plan = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    for script in re.findall(r"(?:^|\s)(scripts/[\w./-]+|\.venv/bin/\w+)", plan.stdout):
        assert (REPO / script).exists(), f"make {target} runs {script}, which does not exist:\n{plan.stdout}"


def test_the_readme_points_to_make_help():
    assert "`make help`" in (REPO / "README.md").read_text()
