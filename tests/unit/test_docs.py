"""README.md: generated from README.md.gotmpl and values.yaml by helm-docs, and documents every value."""
import re
import subprocess

import pytest
import yaml

from chart_render import CHART, REPO, value_paths

README = REPO / "README.md"
REGENERATE = "(cd chart && ../.tools/bin/helm-docs --chart-search-root . --template-files ../README.md.gotmpl --output-file ../README.md)"


def generated_readme(tool):
    result = subprocess.run(
        [tool("helm-docs"), "--chart-search-root", ".", "--template-files", "../README.md.gotmpl",
         "--output-file", "../README.md", "--dry-run"],
        cwd=CHART, capture_output=True, text=True,
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


# Claims an older design made, which the code no longer does: the hook only checks the relay settings (the
# relay-settings sidecar applies them), nothing execs into a pod, and nothing logs out when a relay stops.
STALE_CLAIMS = {
    r"\bhook\b[^.\n]{0,40}\bappl(?:y|ies)\b": "the hook checks the relay settings; the relay-settings sidecar applies them",
    r"\bread and exec\b": "no Role of the chart grants pods/exec",
    r"\blog out cleanly\b": "a stopping relay does not log out; its identity stays in the state Secret",
}


@pytest.mark.parametrize("path", ["README.md", "README.md.gotmpl", "chart/README.md", "chart/values.yaml",
                                  *sorted(str(p.relative_to(REPO)) for p in (CHART / "templates").rglob("*") if p.is_file())])
def test_docs_make_no_claim_the_code_no_longer_makes(path):
    text = (REPO / path).read_text()
    found = [(m.group(0), fact) for pattern, fact in STALE_CLAIMS.items()
             for m in re.finditer(pattern, text, re.IGNORECASE)]
    assert not found, f"{path} says what the chart no longer does: {found}"
