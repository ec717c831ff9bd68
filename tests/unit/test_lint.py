"""helm lint, chart-testing, yamllint, and rendering that is the same every time and under Helm 3 and 4."""

import ast
import os
import re
import subprocess

import pytest
import yaml

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


def command_word(node: ast.expr, constants: dict[str, str]) -> str | None:
    """A program or subcommand as a test's code names it: "ruff", helm (a parameter), tool("ct"), SHELLCHECK (a module
    constant: the last word of its path)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id, node.id).rsplit("/", 1)[-1]
    if isinstance(node, ast.Call) and node.args:
        return command_word(node.args[0], constants)
    return None


def position(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def linters_the_suite_runs() -> set[str]:
    """The programs (and subcommands) the tests of `make lint` run, read off their code: run("ruff", "check", …),
    run(helm, "lint", …), run(tool("ct"), "lint", …), go("vet", …), subprocess.run(["gofmt", "-l", …]) and
    subprocess.run([SHELLCHECK, …])."""
    lint = re.search(r"^lint:.*\n\t(.*)", (REPO / "Makefile").read_text(), re.M)
    assert lint, "the Makefile has a lint target"
    found = set()
    for path in re.findall(r"tests/unit/\S+\.py", lint.group(1)):
        tree = ast.parse((REPO / path).read_text())
        constants = {  # NAME = an expression of strings: its last string (SHELLCHECK's path ends in "shellcheck")
            node.targets[0].id: strings[-1]
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            for strings in [
                [c.value for c in sorted(ast.walk(node.value), key=position) if isinstance(c, ast.Constant)]
            ]
            if strings and isinstance(strings[-1], str)
        }
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = ast.unparse(call.func)
            if name == "go":
                command = ["go", *(command_word(a, constants) for a in call.args[:1])]
            elif name == "run":
                command = [command_word(a, constants) for a in call.args[:2]]
            elif name == "subprocess.run" and call.args and isinstance(call.args[0], ast.List):
                command = [command_word(a, constants) for a in call.args[0].elts[:2]]
            else:
                continue
            words = [w for w in command if w and not w.startswith("-") and "/" not in w]
            if words:
                found.add(" ".join(words[:2]) if words[0] in ("ruff", "go", "helm", "ct") else words[0])
    # not linters: the agent's Go tests and module queries (`go test`, `go list`; "go" alone is the go() helper's own
    # call), pre-commit itself, and the Makefile's dry runs
    return {f for f in found if f not in {"go", "go test", "go list", "go mod", "pre-commit", "make", "git"}}


def test_every_linter_the_suite_runs_has_a_pre_commit_hook():
    config = REPO / ".pre-commit-config.yaml"
    valid = run("pre-commit", "validate-config", str(config))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    entries = [hook["entry"] for repo in yaml.safe_load(config.read_text())["repos"] for hook in repo["hooks"]]
    linters = linters_the_suite_runs()
    assert {"ruff check", "ruff format", "mypy", "go vet", "gofmt", "shellcheck", "yamllint", "helm lint"} <= linters
    # each word in its order ("helm lint" in `"$helm" lint`, with helm the loop's .tools/bin/helm and helm3)
    words = {linter: ".*".join(rf"\b{re.escape(w)}\b" for w in linter.split()) for linter in linters}
    missing = [linter for linter in sorted(linters) if not any(re.search(words[linter], e, re.S) for e in entries)]
    assert not missing, f"linters the suite runs that .pre-commit-config.yaml does not: {missing}"
