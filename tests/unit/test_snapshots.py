"""The default render and the write-up's (seed) render, checked in: every change to what users get shows up in review.

Update after a deliberate change, then review the diff:  UPDATE_SNAPSHOTS=1 scripts/test --unit -k snapshot
"""

import os

import pytest

from support.render import helm_text
from support.repo import REPO
from support.values import ci_values

SNAPSHOTS = REPO / "tests" / "snapshots"
# the defaults, and the write-up's setup (chart/ci/seed-values.yaml)
VARIANTS = {"default": {}, "seed": ci_values("seed")}
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
        "the snapshot's diff with the change"
    )
