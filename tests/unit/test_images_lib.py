"""Helpers of scripts/images/lib.sh that the deploy scripts rely on, run against a fake kubectl that answers as the
real one does on a new cluster."""

from __future__ import annotations

import os
import subprocess

from support.repo import REPO

LIB = REPO / "scripts" / "images" / "lib.sh"


def fake_kubectl(tmp_path, answers: list[tuple[int, str]]):
    """A kubectl that answers its Nth call with the Nth (exit status, output) of ANSWERS (the last one from then on)
    and counts its calls in tmp_path/calls."""
    script = tmp_path / "kubectl"
    cases = "\n".join(f"  {i}) echo '{out}'; exit {code} ;;" for i, (code, out) in enumerate(answers, 1))
    last_code, last_out = answers[-1]
    script.write_text(f"""#!/bin/sh
n=$(($(cat "{tmp_path}/calls" 2>/dev/null || echo 0) + 1)); echo $n >"{tmp_path}/calls"
case $n in
{cases}
  *) echo '{last_out}'; exit {last_code} ;;
esac
""")
    script.chmod(0o755)
    return script


def run_lib(tmp_path, command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TSRELAY_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{LIB}"; {command}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_crd_that_has_no_status_yet_is_waited_for_until_it_is_established(tmp_path):
    # On a new cluster a CRD applied a moment ago is first not found, then has no conditions, then is Established;
    # `kubectl wait --for condition=established` fails at once on the second (the cold run of 2026-12-02).
    kubectl = fake_kubectl(
        tmp_path,
        [
            (1, 'Error from server (NotFound): customresourcedefinitions "x" not found'),
            (0, ""),
            (0, "False"),
            (0, "True"),
        ],
    )
    result = run_lib(tmp_path, f'wait_established "{kubectl}" applications.argoproj.io')
    assert result.returncode == 0, f"the wait should end when the CRD is Established: {result.stderr}"
    assert (tmp_path / "calls").read_text().strip() == "4", "it should ask until kubectl says True, and then stop"


def test_each_crd_is_waited_for(tmp_path):
    kubectl = fake_kubectl(tmp_path, [(0, "True"), (0, ""), (0, "True")])
    result = run_lib(tmp_path, f'wait_established "{kubectl}" appprojects.argoproj.io applications.argoproj.io')
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calls").read_text().strip() == "3", "the second CRD should be waited for too"
