"""GitOps-safe by construction: what Flux and Argo CD render is stable, and the relays' identities survive them."""

import re

import pytest

from support.render import find, helm_text, render
from support.repo import CHART, versions

# What Argo CD's repo-server passes to `helm template` (argo-cd reposerver/repository.go): the cluster's version and
# API versions (the release name is the Application's, given like a user's).
ARGO_ARGS = (
    "--kube-version",
    versions()["KUBE_VERSION_NEWEST"],
    "--api-versions",
    "monitoring.coreos.com/v1",
    "--include-crds",
)


@pytest.mark.parametrize("replicas", [1, 3])
def test_state_secrets_survive_pruning_and_carry_no_data(replicas):
    secrets = [s for s in find(render({"replicaCount": replicas}), "Secret") if "-state-" in s["metadata"]["name"]]
    assert len(secrets) == replicas
    for secret in secrets:
        annotations = secret["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep", "helm uninstall must keep the node identity"
        assert annotations["argocd.argoproj.io/sync-options"] == "Prune=false", "Argo CD would prune it (argo-cd#17819)"
        assert annotations["argocd.argoproj.io/compare-options"] == "IgnoreExtraneous"
        assert "data" not in secret and "stringData" not in secret, (
            "a templated data field would be reverted by drift detection and erase tailscaled's state"
        )


@pytest.mark.parametrize("values", [{}, {"replicaCount": 2, "relay": {"port": 61441}}])
def test_a_render_with_argo_cds_arguments_is_deterministic(values):
    first, second = (helm_text(values, args=ARGO_ARGS) for _ in range(2))
    assert first == second, "two renders differ: Argo CD and Flux would see a permanent diff"


def test_templates_use_no_cluster_lookups_randomness_or_clocks():
    # lookup returns nothing under `helm template` (Argo CD), random and time functions differ on every render
    forbidden = re.compile(r"\b(lookup|rand\w*|uuidv4|now|date\w*|genCA|genPrivateKey|genSelfSignedCert\w*)\b")
    for path in sorted((CHART / "templates").rglob("*")):
        if path.is_file():
            code = " ".join(re.findall(r"{{(.*?)}}", path.read_text(), re.S))
            found = forbidden.search(code)
            assert found is None, f"{path.name} uses {found.group(0)}"
