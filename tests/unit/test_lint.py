"""helm lint, chart-testing, yamllint, and rendering that is the same every time and under Helm 3 and 4."""

import os
import subprocess

import pytest

from support.render import helm_text
from support.repo import CHART, HELM, HELM3, REPO
from support.values import AGENT_IMAGE, ci_values

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
YAML_FILES = [
    CHART / "Chart.yaml",
    CHART / "values.yaml",
    *CI_VALUES,
    REPO / "ct.yaml",
    REPO / ".yamllint",
    *sorted((REPO / ".github" / "workflows").glob("*.y*ml")),
]

VARIANTS = {
    "defaults": {},
    "seed": ci_values("seed"),
    "three replicas": {"replicaCount": 3, "tailscale": {"tags": ["tag:relay"], "loginServer": "https://hs.example"}},
    "kernel oauth metrics": {
        "auth": {"authKey": "", "oauth": {"existingSecret": "o"}},
        "tailscale": {"tags": ["tag:r"], "userspace": False},
        "metrics": {"enabled": True},
    },
}


def run(*command, **kwargs):
    env = {**os.environ, "PATH": f"{REPO / '.tools' / 'bin'}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, **kwargs)


@pytest.mark.parametrize("helm", [HELM, HELM3], ids=["helm4", "helm3"])
@pytest.mark.parametrize("values_file", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_helm_lint_strict(helm, values_file):
    result = run(
        helm,
        "lint",
        "--strict",
        str(CHART),
        "--values",
        str(values_file),
        "--set",
        f"agent.image.repository={AGENT_IMAGE['agent']['image']['repository']}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_testing_lint(tool):
    result = run(tool("ct"), "lint", "--config", "ct.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All charts linted successfully" in result.stdout + result.stderr


def test_yamllint():
    result = run("yamllint", "--strict", "-c", ".yamllint", *map(str, YAML_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm3_and_helm4_render_identically(values):
    # Helm 4 ends each document with a blank line where Helm 3 does not; nothing else may differ.
    def without_blank_lines(text):
        return [line for line in text.splitlines() if line.strip()]

    assert without_blank_lines(helm_text(values, helm=HELM3)) == without_blank_lines(helm_text(values, helm=HELM))


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_rendering_is_deterministic(values):
    assert helm_text(values) == helm_text(values)


def test_the_python_is_clean_under_ruffs_linter_and_formatter():
    # pyproject.toml's [tool.ruff]: pycodestyle, pyflakes, import order, bugbear and pyupgrade, and ruff's format
    lint = run("ruff", "check", "tests", "bench")
    assert lint.returncode == 0, f"{lint.stdout}{lint.stderr}(fix, or .venv/bin/ruff check --fix tests bench)"
    formatted = run("ruff", "format", "--check", "--diff", "tests", "bench")
    assert formatted.returncode == 0, f"{formatted.stdout}{formatted.stderr}(.venv/bin/ruff format tests bench)"


def test_the_python_type_checks():
    # pyproject.toml's [tool.mypy]: tests/ and bench/, every function of the harness (tests/support) annotated
    checked = run("mypy", timeout=600)
    assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}(.venv/bin/mypy)"
