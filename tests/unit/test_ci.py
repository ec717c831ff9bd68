"""CI runs what the README tells people to run, and the workflow's actions are pinned."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from support.docs import blocks, commands, section
from support.repo import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))


def readme_commands():
    """The setup and test commands the README gives (under "More documentation"; docs/development.md says more)."""
    shown = blocks(section((REPO / "README.md").read_text(), "More documentation"), "sh")
    assert shown, "README.md should show the setup and test commands under More documentation"
    return commands(shown[0])


def test_ci_runs_the_readme_commands():
    setup, test = readme_commands()
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert setup in lines
    assert any(line == test or line.startswith(test + " ") for line in lines), f".ci/run does not run {test}"


def test_workflow_actions_are_pinned_by_commit():
    assert WORKFLOWS, "no GitHub Actions workflow"
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        for job_name, job in workflow["jobs"].items():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (
                        f"{path.name} job {job_name} uses {step['uses']}, not pinned to a commit"
                    )


def test_workflow_runs_the_readme_commands():
    setup, test = readme_commands()
    for path in WORKFLOWS:
        runs = [step.get("run") for job in yaml.safe_load(path.read_text())["jobs"].values() for step in job["steps"]]
        assert setup in runs and any(r and r.startswith(test) for r in runs), path.name


@pytest.mark.parametrize(
    "env, required",
    [({"CI": "true"}, True), ({"REQUIRE_CLUSTER": "1"}, True), ({}, False)],
    ids=["CI=true", "REQUIRE_CLUSTER=1", "neither"],
)
def test_without_a_cluster_the_integration_tests_fail_in_ci_and_skip_elsewhere(env, required):
    # no cluster: no KUBECONFIG; and none of the CI variables of the run this test itself runs in
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "REQUIRE_CLUSTER", "KUBECONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/test_chart_install.py", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    if required:
        assert result.returncode != 0 and "requires the cluster" in output and "scripts/cluster up" in output, (
            f"with {env} and no cluster the integration tests must fail, naming how to bring one up:\n{output[-1500:]}"
        )
    else:
        assert result.returncode == 0 and "skipped" in output, (
            f"outside CI, no cluster means the integration tests are skipped with a hint:\n{output[-1500:]}"
        )
