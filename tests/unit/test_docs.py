"""README.md: generated from README.md.gotmpl and values.yaml by helm-docs, and documents every value."""

import re
import subprocess

import pytest
import yaml

from support.docs import DOCS, USER_DOCS, anchor, blocks, headings, mentions, section
from support.render import RenderError, render
from support.repo import CHART, REPO
from support.values import ci_values, installable, value_paths

README = REPO / "README.md"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
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
    try:
        upgrading = section(text, "Upgrading")
    except LookupError:
        upgrading = ""
    start = text.find(upgrading)
    if upgrading and start <= match.start() < start + len(upgrading):
        return True
    line = text[text.rfind("\n", 0, match.start()) + 1 : text.find("\n", match.end())]
    return bool(re.search(r"\b0\.[0-3](\.\d+|\.x)?\b|in chart 0\.4\.0|hasKey", line))


@pytest.mark.parametrize(
    "path",
    [
        "README.md",
        "README.md.gotmpl",
        *sorted(str(p.relative_to(REPO)) for p in DOCS.glob("*.md")),
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


def test_the_readmes_install_is_the_write_ups_setup():
    install = section(README.read_text(), "3. Install")
    values = [yaml.safe_load(b.text) for b in blocks(install, "yaml")]
    assert values and values[0] == ci_values("seed"), (
        "README's relay-values.yaml (Install, step 3) should be chart/ci/seed-values.yaml, the setup the tests install"
    )


def chart_values_snippets() -> list[tuple[str, str, str]]:
    """(file, section, text) of every yaml block in the user's docs that is chart values: only values.yaml's top-level
    keys, no Kubernetes object."""
    found = []
    for path in USER_DOCS:
        for block in blocks(path.read_text(), "yaml"):
            data = next(yaml.safe_load_all(block.text), None)
            if isinstance(data, dict) and "apiVersion" not in data and set(data) <= set(VALUES):
                found.append((str(path.relative_to(REPO)), block.section, block.text))
    return found


@pytest.mark.parametrize(("path", "heading", "snippet"), chart_values_snippets(), ids=lambda v: str(v)[:40])
def test_every_values_snippet_in_the_docs_renders(path, heading, snippet):
    try:
        render(installable(yaml.safe_load(snippet)))
    except RenderError as error:
        pytest.fail(f"{path}, section {heading!r}: the chart refuses these values:\n{snippet}\n{error}")


def test_the_docs_show_values_snippets():
    # the parametrized test above must not pass by finding nothing
    assert len(chart_values_snippets()) >= 5, chart_values_snippets()


# Dotted names in backticks that look like a value's but are another program's field.
NOT_OUR_VALUES = {"test.enable": "Flux's HelmRelease spec.test.enable"}


def default_of(path: str):
    value = VALUES
    for key in path.split("."):
        value = value[key]
    return value


@pytest.mark.parametrize("path", [str(p.relative_to(REPO)) for p in USER_DOCS] + ["chart/templates/NOTES.txt"])
def test_every_value_the_docs_name_exists_with_the_default_they_give(path):
    text = (REPO / path).read_text()
    try:
        upgrading = section(text, "Upgrading")
    except LookupError:
        upgrading = ""
    known = set(value_paths(VALUES))
    wrong = []
    for name, value, after in mentions(REPO / path):
        if name.split(".")[0] not in VALUES or name in NOT_OUR_VALUES:
            continue
        if not (name in known or any(k.startswith(name + ".") for k in known)):
            # the upgrade notes name the values older versions had
            if f"`{name}" not in upgrading:
                wrong.append(f"`{name}` is not a value of chart/values.yaml")
            continue
        default = default_of(name)
        # "`x: v` (the default)", "`x` (30 s)", "`x`, off by default"
        if value is not None and re.match(r"\W*\(?the default\b", after):
            if yaml.safe_load(value) != default:
                wrong.append(f"`{name}: {value}` is called the default, but values.yaml has {default!r}")
        number = re.match(r" \((\d+)( s)?\)", after)
        if value is None and number and int(number.group(1)) != default:
            wrong.append(f"`{name}` ({number.group(1)}) disagrees with values.yaml's default {default!r}")
        if re.match(r"\W*\(?off by default", after) and default is not False:
            wrong.append(f"`{name}` is said to be off by default, but values.yaml has {default!r}")
    assert not wrong, f"{path}: " + "; ".join(wrong)


def test_every_link_in_the_docs_leads_somewhere():
    broken = []
    for path in [*USER_DOCS, REPO / "CHANGELOG.md"]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif fragment and linked.suffix == ".md":
                anchors = {anchor(title) for _, _, title in headings(linked.read_text())}
                if fragment not in anchors:
                    broken.append(f"{path.name}: {target} (no such heading in {linked.name})")
    assert not broken, f"links that lead nowhere: {broken}"
