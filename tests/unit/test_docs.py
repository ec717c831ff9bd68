"""README.md: generated from README.md.gotmpl and values.yaml by helm-docs, and documents every value."""

import re
import subprocess

import pytest
import yaml

from support.repo import CHART, REPO
from support.values import value_paths

README = REPO / "README.md"
REGENERATE = (
    "(cd chart && ../.tools/bin/helm-docs --chart-search-root . --template-files ../README.md.gotmpl "
    "--output-file ../README.md)"
)


def generated_readme(tool):
    result = subprocess.run(
        [
            tool("helm-docs"),
            "--chart-search-root",
            ".",
            "--template-files",
            "../README.md.gotmpl",
            "--output-file",
            "../README.md",
            "--dry-run",
        ],
        cwd=CHART,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readme_values_table_matches_values_yaml(tool):
    assert generated_readme(tool) == README.read_text(), f"README.md is stale: regenerate it with {REGENERATE}"


def test_every_value_has_a_described_row():
    rows = {}
    for line in README.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| Key"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[-1]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in value_paths(values):
        assert key in rows, f"{key} is not in README's values table: add a '# --' comment above it in values.yaml"
        assert rows[key], f"{key} has no description: add a '# --' comment above it in values.yaml"


# Claims an older design made, which the code no longer does: the hook only checks the relay settings (the relay's
# agent applies them), nothing execs into a pod, nothing logs out when a relay stops, and the shell sidecar with its
# toolbox image and its log lines is gone.
STALE_CLAIMS = {
    r"\bhook\b[^.\n]{0,40}\bappl(?:y|ies)\b": "the hook checks the relay settings; the relay's agent applies them",
    r"relay-settings\b": "the relay-settings sidecar (chart 0.3 and older) is now the agent container",
    r"\bsettingsSidecar\b|\bhook\.image\b": "settingsSidecar and hook.image are agent and agent.image since 0.4.0",
    r"alpine/k8s": "no default image of the chart comes from a third party but Tailscale's relay image",
    r"\bread and exec\b": "no Role of the chart grants pods/exec",
    r"\blog out cleanly\b": "a stopping relay does not log out; its identity stays in the state Secret",
}


def about_an_older_version(text: str, match: re.Match) -> bool:
    """MATCH speaks of an older chart version, so it may name what that version had: it is in README's Upgrading
    section, on a line that names an older version (a changelog entry, a migration message), or in validate.yaml's
    check for a removed value."""
    upgrading = text.find("## Upgrading")
    if upgrading != -1 and upgrading < match.start() < text.find("\n## ", upgrading + 1) % (len(text) + 1):
        return True
    line = text[text.rfind("\n", 0, match.start()) + 1 : text.find("\n", match.end())]
    return bool(re.search(r"\b0\.[0-3](\.\d+|\.x)?\b|in chart 0\.4\.0|hasKey", line))


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "README.md.gotmpl",
        "chart/README.md",
        "chart/values.yaml",
        *sorted(str(p.relative_to(REPO)) for p in (CHART / "templates").rglob("*") if p.is_file()),
    ],
)
def test_docs_make_no_claim_the_code_no_longer_makes(path):
    text = (REPO / path).read_text()
    found = [
        (m.group(0), fact)
        for pattern, fact in STALE_CLAIMS.items()
        for m in re.finditer(pattern, text, re.IGNORECASE)
        if not about_an_older_version(text, m)
    ]
    assert not found, f"{path} says what the chart no longer does: {found}"
