"""An independent scanner: kube-score on the renders a reviewer would try. Every finding it grades critical or
warning is either fixed in the chart or listed below with the reason the chart does it on purpose; a new finding
fails the test, and so does an accepted one that no longer occurs (so the list stays true)."""
import json
import subprocess

import pytest

from chart_render import helm_text

VARIANTS = {
    "default": {},
    "seed": {"relay": {"port": 61441}, "service": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}},
    "replicas 2": {"replicaCount": 2},
    "kernel mode": {"tailscale": {"userspace": False}},
    "network policies": {"networkPolicy": {"enabled": True}},
}

# (check id, container or "", summary) -> why the chart does it on purpose
ACCEPTED = {
    ("container-image-pull-policy", "*", "ImagePullPolicy is not set to Always"):
        "images are pinned by tag (or digest); IfNotPresent lets a node start the relay without its registry",
    ("container-security-context-user-group-id", "*", "The container is running with a low user ID"):
        "uid 1000, non-root, every capability dropped, read-only root; podSecurityContext.runAsUser changes it",
    ("container-security-context-user-group-id", "*", "The container running with a low group ID"):
        "gid 1000, as above; podSecurityContext.runAsGroup changes it",
    ("container-resources", "tailscale", "CPU limit is not set"):
        "CPU throttling a packet relay delays every relayed packet; resources.limits.cpu sets one",
    ("service-targets-pod", "", "The services selector does not match any pods"):
        "each replica's Service selects statefulset.kubernetes.io/pod-name, a label the StatefulSet controller adds",
    ("pod-probes", "", "Container is missing a livenessProbe"):
        "a liveness probe would restart a relay that waits for its control server; containerboot exits on fatal errors",
    ("pod-networkpolicy", "", "The pod does not have a matching NetworkPolicy"):
        "NetworkPolicies are opt-in (networkPolicy.enabled): they only work where the CNI enforces them",
}
def findings(values: dict, tool) -> set[tuple[str, str, str, str]]:
    """(object, check id, container or "", summary) for every critical or warning grade kube-score gives."""
    result = subprocess.run([tool("kube-score"), "score", "-o", "json", "-"], input=helm_text(values),
                            capture_output=True, text=True, timeout=120)
    assert result.stdout, f"kube-score printed nothing: {result.stderr}"
    found = set()
    for scored in json.loads(result.stdout):
        for check in scored["checks"]:
            if check["skipped"] or check["grade"] >= 10:  # 10 = all OK
                continue
            for comment in check["comments"] or [{"path": "", "summary": "(no comment)"}]:
                found.add((scored["object_name"], check["check"]["id"], comment["path"], comment["summary"]))
    return found


def accepted(check: str, path: str, summary: str) -> bool:
    return (check, path, summary) in ACCEPTED or (check, "*", summary) in ACCEPTED


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_kube_score_finds_nothing_the_chart_does_not_do_on_purpose(values, tool):
    unexplained = sorted(f for f in findings(values, tool) if not accepted(*f[1:]))
    assert not unexplained, "kube-score findings to fix (or to list in ACCEPTED with the reason):\n" + \
        "\n".join(f"{obj}: {check} [{path}] {summary}" for obj, check, path, summary in unexplained)


def test_every_accepted_finding_still_occurs(tool):
    seen = {f[1:] for values in VARIANTS.values() for f in findings(values, tool)}
    stale = [key for key in ACCEPTED if not any(accepted(*s) and (s[0], s[2]) == (key[0], key[2]) for s in seen)]
    assert not stale, f"no longer found by kube-score, remove from ACCEPTED: {stale}"


def test_network_policies_cover_every_pod(tool):
    uncovered = sorted(f[0] for f in findings(VARIANTS["network policies"], tool) if f[1] == "pod-networkpolicy")
    assert not uncovered, f"with networkPolicy.enabled every pod needs a NetworkPolicy: {uncovered}"
