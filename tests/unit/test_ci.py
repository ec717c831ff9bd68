"""CI runs what the README tells people to run, and the workflow's actions are pinned."""
import re

import yaml

from chart_render import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))


def readme_commands():
    block = re.search(r"## Quick start for developers.*?```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md should show the setup and test commands in its quick start"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


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
                    assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), \
                        f"{path.name} job {job_name} uses {step['uses']}, not pinned to a commit"


def test_workflow_runs_the_readme_commands():
    setup, test = readme_commands()
    for path in WORKFLOWS:
        runs = [step.get("run") for job in yaml.safe_load(path.read_text())["jobs"].values() for step in job["steps"]]
        assert setup in runs and any(r and r.startswith(test) for r in runs), path.name
