"""README.md: generated from README.md.gotmpl and values.yaml by helm-docs, and documents every value."""
import subprocess

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
