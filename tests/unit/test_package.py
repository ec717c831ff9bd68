"""The packaged chart is one a registry user is glad to find: its README (values table), Artifact Hub metadata that
matches what it runs, and a changelog entry for this version."""

import re
import subprocess
import tarfile

import pytest
import yaml

from support.render import all_pod_specs, render
from support.repo import CHART, HELM, REPO

CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
ANNOTATIONS = CHART_YAML["annotations"]
REGENERATE = (
    "(cd chart && ../.tools/bin/helm-docs --chart-search-root . --template-files README.md.gotmpl "
    "--output-file README.md)"
)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("package")
    result = subprocess.run([HELM, "package", str(CHART), "--destination", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return next(out.glob("*.tgz"))


def test_chart_readme_is_generated_from_values(tool):
    result = subprocess.run(
        [
            tool("helm-docs"),
            "--chart-search-root",
            ".",
            "--template-files",
            "README.md.gotmpl",
            "--output-file",
            "README.md",
            "--dry-run",
        ],
        cwd=CHART,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (CHART / "README.md").read_text(), (
        f"chart/README.md is stale: regenerate it with {REGENERATE}"
    )


def test_helm_show_readme_of_the_package_has_the_values_table(package):
    readme = subprocess.run([HELM, "show", "readme", str(package)], capture_output=True, text=True, check=True).stdout
    assert "| relay.port | int | `40000` |" in readme, "helm show readme should show the values table"
    with tarfile.open(package) as archive:
        names = archive.getnames()
    assert "tailscale-peer-relay/README.md" in names and not [n for n in names if n.endswith(".gotmpl")]


def test_artifact_hub_images_are_the_ones_a_default_install_runs():
    listed = {entry["image"] for entry in yaml.safe_load(ANNOTATIONS["artifacthub.io/images"])}
    # a checkout names the agent image by name only; a release names its repository (test_chart_distribution.py)
    rendered = {
        c["image"]
        for _, spec in all_pod_specs(render({"agent": {"image": {"repository": "relay-agent"}}}))
        for c in spec["containers"]
    }
    assert listed == rendered, (
        f"artifacthub.io/images lists {sorted(listed)}, the default render runs {sorted(rendered)}"
    )


def test_changelog_has_this_version_and_the_annotation_repeats_it():
    changelog = (REPO / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)\n\n(.*?)(?=^## |\Z)", changelog, re.M | re.S)
    assert newest and newest.group(1) == CHART_YAML["version"], "CHANGELOG.md's newest entry is not this chart version"
    entries = [line[2:].split(": ", 1) for line in newest.group(2).strip().splitlines()]
    changes = [[c["kind"], c["description"]] for c in yaml.safe_load(ANNOTATIONS["artifacthub.io/changes"])]
    assert changes == entries, "artifacthub.io/changes should be CHANGELOG.md's newest entry"
    kinds = {"added", "changed", "deprecated", "removed", "fixed", "security"}
    assert {kind for kind, _ in changes} <= kinds, "Artifact Hub knows only these kinds of change"
    security = any(kind == "security" for kind, _ in changes)
    assert ANNOTATIONS.get("artifacthub.io/containsSecurityUpdates", "false") == str(security).lower(), (
        "artifacthub.io/containsSecurityUpdates should say whether this release's changelog entry has a security change"
        " (Artifact Hub flags such releases to their users)"
    )


def test_artifact_hub_links_and_license():
    links = yaml.safe_load(ANNOTATIONS["artifacthub.io/links"])
    assert all(link["url"].startswith("https://") and link["name"] for link in links)
    assert ANNOTATIONS["artifacthub.io/license"] == "BSD-3-Clause"


def test_artifacthub_repo_metadata_is_what_artifact_hub_reads():
    metadata = yaml.safe_load((REPO / "artifacthub-repo.yml").read_text())
    assert set(metadata) <= {"repositoryID", "owners", "ignore"}, "Artifact Hub reads only these keys"
    (rule,) = metadata["ignore"]
    assert rule["name"] == CHART_YAML["name"]
    ignored = re.compile(rule["version"])
    assert ignored.search("0.3.0-rc.1") and not ignored.search(CHART_YAML["version"]), (
        "only pre-releases should be kept off Artifact Hub"
    )
