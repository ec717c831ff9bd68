"""The default render and the write-up's (seed) render, checked in: every change to what users get shows up in review.

Update after a deliberate change, then review the diff:  UPDATE_SNAPSHOTS=1 scripts/test --unit -k snapshot
"""
import os

import pytest
import yaml

from chart_render import CHART, REPO, helm_text

SNAPSHOTS = REPO / "tests" / "snapshots"
SEED = yaml.safe_load((CHART / "ci" / "seed-values.yaml").read_text())
VARIANTS = {
    "default": {},
    # the test variants live in chart/ci/; seed-values.yaml is the write-up's setup (its own credential: an
    # existing Secret, so not the render helper's example key)
    "seed": {**SEED, "auth": {**SEED["auth"], "authKey": ""}},
}
UPDATE = "UPDATE_SNAPSHOTS=1 scripts/test --unit -k snapshot"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_render_is_the_reviewed_snapshot(name):
    rendered = helm_text(VARIANTS[name])
    path = SNAPSHOTS / f"{name}.yaml"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(rendered)
    assert path.exists(), f"no snapshot {path.relative_to(REPO)}: write it with {UPDATE}"
    assert rendered == path.read_text(), (
        f"the {name} render differs from {path.relative_to(REPO)}: if the change is meant, run {UPDATE} and review "
        "the snapshot's diff with the change")
