"""Independent scanners, kube-score and checkov, on the renders a reviewer would try. Every finding (kube-score:
graded critical or warning; checkov: failed) is either fixed in the chart or listed below with the reason the chart
does it on purpose; a new finding fails the test, and so does an accepted one that no longer occurs (so the lists
stay true)."""

import functools
import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.render import helm_text
from support.values import ci_values

# later_tools: kube-score, built in the background by scripts/setup
pytestmark = pytest.mark.later_tools

VARIANTS = {
    "default": {},
    # the variants in chart/ci/
    **{name: ci_values(name) for name in ("seed", "replicas", "kernel", "network-policy")},
}

# (check id, container or "", summary) -> why the chart does it on purpose
ACCEPTED = {
    (
        "container-image-pull-policy",
        "*",
        "ImagePullPolicy is not set to Always",
    ): "images are pinned by tag (or digest); IfNotPresent lets a node start the relay without its registry",
    (
        "container-security-context-user-group-id",
        "*",
        "The container is running with a low user ID",
    ): "uid 1000, non-root, every capability dropped, read-only root; podSecurityContext.runAsUser changes it",
    (
        "container-security-context-user-group-id",
        "*",
        "The container running with a low group ID",
    ): "gid 1000, as above; podSecurityContext.runAsGroup changes it",
    (
        "container-resources",
        "tailscale",
        "CPU limit is not set",
    ): "CPU throttling a packet relay delays every relayed packet; resources.limits.cpu sets one",
    (
        "service-targets-pod",
        "",
        "The services selector does not match any pods",
    ): "each replica's Service selects statefulset.kubernetes.io/pod-name, a label the StatefulSet controller adds",
    (
        "pod-probes",
        "",
        "Container is missing a livenessProbe",
    ): "a liveness probe would restart a relay that waits for its control server; containerboot exits on fatal errors",
    (
        "pod-networkpolicy",
        "",
        "The pod does not have a matching NetworkPolicy",
    ): "NetworkPolicies are opt-in (networkPolicy.enabled): they only work where the CNI enforces them",
}


@functools.cache
def findings(variant: str, kube_score: str) -> frozenset[tuple[str, str, str, str]]:
    """(object, check id, container or "", summary) for every critical or warning grade kube-score gives the
    VARIANT's render (each variant scanned once per session, however many tests ask)."""
    result = subprocess.run(
        [kube_score, "score", "-o", "json", "-"],
        input=helm_text(VARIANTS[variant]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout, f"kube-score printed nothing: {result.stderr}"
    found = set()
    for scored in json.loads(result.stdout):
        for check in scored["checks"]:
            if check["skipped"] or check["grade"] >= 10:  # 10 = all OK
                continue
            for comment in check["comments"] or [{"path": "", "summary": "(no comment)"}]:
                found.add((scored["object_name"], check["check"]["id"], comment["path"], comment["summary"]))
    return frozenset(found)


def accepted(check: str, path: str, summary: str) -> bool:
    return (check, path, summary) in ACCEPTED or (check, "*", summary) in ACCEPTED


@pytest.mark.parametrize("variant", VARIANTS)
def test_kube_score_finds_nothing_the_chart_does_not_do_on_purpose(variant, tool):
    unexplained = sorted(f for f in findings(variant, tool("kube-score")) if not accepted(*f[1:]))
    assert not unexplained, "kube-score findings to fix (or to list in ACCEPTED with the reason):\n" + "\n".join(
        f"{obj}: {check} [{path}] {summary}" for obj, check, path, summary in unexplained
    )


def test_every_accepted_finding_still_occurs(tool):
    seen = {f[1:] for variant in VARIANTS for f in findings(variant, tool("kube-score"))}
    stale = [
        key
        for key in ACCEPTED
        if not any(check == key[0] and summary == key[2] and key[1] in ("*", path) for check, path, summary in seen)
    ]
    assert not stale, f"no longer found by kube-score, remove from ACCEPTED: {stale}"


def test_network_policies_cover_every_pod(tool):
    uncovered = sorted(f[0] for f in findings("network-policy", tool("kube-score")) if f[1] == "pod-networkpolicy")
    assert not uncovered, f"with networkPolicy.enabled every pod needs a NetworkPolicy: {uncovered}"


# checkov: (check id, kind of the object) -> why; variants list the renders where it may occur.
ONE_SHOT = "a one-shot pod (hook Job, helm test) that runs seconds: a probe would have nothing to decide"
CHECKOV_ACCEPTED = {
    ("CKV_K8S_11", "StatefulSet"): ACCEPTED[("container-resources", "tailscale", "CPU limit is not set")],
    ("CKV_K8S_43", "*"): "images are pinned by tag; image.digest and hook.image.digest pin them by digest",
    ("CKV_K8S_38", "*"): "every pod talks to the API: the relay to its state Secret and Service, the hook and test to "
    "the relay's pods, logs and Services",
    ("CKV_K8S_15", "*"): ACCEPTED[("container-image-pull-policy", "*", "ImagePullPolicy is not set to Always")],
    ("CKV_K8S_40", "*"): ACCEPTED[
        ("container-security-context-user-group-id", "*", "The container is running with a low user ID")
    ],
    ("CKV_K8S_8", "StatefulSet"): ACCEPTED[("pod-probes", "", "Container is missing a livenessProbe")],
    ("CKV_K8S_8", "Pod"): ONE_SHOT,
    ("CKV_K8S_9", "Pod"): ONE_SHOT,
    ("CKV2_K8S_6", "*"): ACCEPTED[("pod-networkpolicy", "", "The pod does not have a matching NetworkPolicy")],
}
# Only where the render asks for it.
CHECKOV_BY_VARIANT = {
    "kernel": {
        ("CKV_K8S_25", "StatefulSet"): "kernel networking needs NET_ADMIN (values.yaml: tailscale.userspace)",
        ("CKV_K8S_23", "StatefulSet"): "added capabilities are effective only for root (tailscale.userspace)",
    },
    "oauth": {
        ("CKV_K8S_35", "StatefulSet"): "TS_CLIENT_ID, the OAuth client's ID, is not a secret; the client secret is "
        "a file (TS_CLIENT_SECRET=file:…)",
    },
}
CHECKOV_VARIANTS = {
    **VARIANTS,
    "oauth": {
        "auth": {"authKey": "", "oauth": {"clientId": "id", "clientSecret": "s"}},
        "tailscale": {"tags": ["tag:relay"]},
    },
}


@functools.cache
def checkov_findings(variant: str, checkov: str) -> frozenset[tuple[str, str, str]]:
    """(check id, kind, object) for every check checkov fails on the VARIANT's render (scanned once per session)."""
    with tempfile.TemporaryDirectory() as directory:
        rendered = Path(directory) / "render.yaml"
        rendered.write_text(helm_text(CHECKOV_VARIANTS[variant]))
        result = subprocess.run(
            [checkov, "--quiet", "--compact", "--framework", "kubernetes", "-o", "json", "-f", str(rendered)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.stdout.strip(), f"checkov printed nothing: {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    return frozenset(
        (c["check_id"], c["resource"].split(".")[0], c["resource"].split(".")[2])
        for c in report["results"]["failed_checks"]
    )


def checkov_allowed(variant: str) -> dict:
    return {**CHECKOV_ACCEPTED, **CHECKOV_BY_VARIANT.get(variant, {})}


@pytest.mark.parametrize("variant", CHECKOV_VARIANTS)
def test_checkov_finds_nothing_the_chart_does_not_do_on_purpose(variant, tool):
    allowed = checkov_allowed(variant)
    found = checkov_findings(variant, tool("checkov"))
    unexplained = sorted(f for f in found if (f[0], f[1]) not in allowed and (f[0], "*") not in allowed)
    assert not unexplained, "checkov findings to fix (or to accept with the reason):\n" + "\n".join(
        f"{kind} {name}: {check}" for check, kind, name in unexplained
    )
    if variant == "network-policy":
        assert not [f for f in found if f[0] == "CKV2_K8S_6"], "with networkPolicy.enabled every pod has a policy"


def test_every_accepted_checkov_finding_still_occurs(tool):
    # as for kube-score: the reasons above must describe what checkov still finds
    seen = {
        (check, kind) for variant in CHECKOV_VARIANTS for check, kind, _ in checkov_findings(variant, tool("checkov"))
    }
    keys = set(CHECKOV_ACCEPTED) | {key for extra in CHECKOV_BY_VARIANT.values() for key in extra}
    stale = sorted(key for key in keys if not any(check == key[0] and key[1] in ("*", kind) for check, kind in seen))
    assert not stale, f"no longer found by checkov, remove from CHECKOV_ACCEPTED or CHECKOV_BY_VARIANT: {stale}"
