"""Flux, for real: Flux's own source-controller and helm-controller (scripts/images/flux) install the chart from the
OCI registry with Flux's recommended settings (OCIRepository with a cosign-verified chart, HelmRelease with drift
detection, helm tests and rollback remediation), and the relay's identity survives what Flux does to a release."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from support.cluster import cluster_values
from support.custom_object import CustomObject
from support.release import Release
from support.values import deep_merge
from support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.gitops]

PORT = 41641
INTERVAL = "30s"  # drift detection runs on every reconciliation


class Flux:
    """The OCIRepository and HelmRelease of one test namespace."""

    def __init__(self, kube_api, namespace: str, published: dict):
        self.core = client.CoreV1Api(kube_api)
        self.namespace = namespace
        self.published = published
        self.release = Release(kube_api, namespace)
        self.source = CustomObject(
            kube_api,
            "source.toolkit.fluxcd.io/v1",
            "OCIRepository",
            "ocirepositories",
            namespace,
            "tailscale-peer-relay",
        )
        self.helmrelease = CustomObject(
            kube_api, "helm.toolkit.fluxcd.io/v2", "HelmRelease", "helmreleases", namespace, "relay"
        )

    def create_source(self, public_key=None):
        """The OCIRepository of the published chart, which source-controller accepts only with a cosign signature
        that PUBLIC_KEY (default: the release's) verifies."""
        self.core.create_namespaced_secret(
            self.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="cosign-public-key"),
                string_data={"cosign.pub": (public_key or self.published["cosign_pub"]).read_text()},
            ),
        )
        self.source.apply(
            {
                "interval": "5m",
                "url": self.published["oci_chart"],
                "ref": {"semver": self.published["version"]},
                "insecure": True,  # the test registry speaks plain HTTP
                "layerSelector": {
                    "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "operation": "copy",
                },
                "verify": {"provider": "cosign", "secretRef": {"name": "cosign-public-key"}},
            }
        )

    def apply_release(self, values: dict, **spec):
        """Creates or updates the HelmRelease with VALUES (and SPEC fields over these defaults)."""
        self.helmrelease.apply(
            deep_merge(
                {
                    "interval": INTERVAL,
                    "releaseName": "relay",
                    "chartRef": {"kind": "OCIRepository", "name": "tailscale-peer-relay"},
                    "install": {"strategy": {"name": "RetryOnFailure", "retryInterval": "1m"}},
                    # a failed upgrade is rolled back at once (no retry): the relay stays on the last good settings
                    "upgrade": {"remediation": {"retries": 0, "remediateLastFailure": True, "strategy": "rollback"}},
                    "driftDetection": {"mode": "enabled"},
                    "test": {"enable": True},
                    "timeout": "5m",
                    "values": values,
                },
                spec,
            )
        )

    def delete_release(self):
        self.helmrelease.delete()
        self.wait(
            lambda: not self.helmrelease.exists(), "the HelmRelease to be gone (helm uninstall done)", timeout=180
        )

    def reconcile_now(self):
        """Asks helm-controller for a reconciliation now (as `flux reconcile helmrelease` does) and waits for it."""
        token = str(time.time_ns())
        self.helmrelease.annotate({"reconcile.fluxcd.io/requestedAt": token})
        self.wait(lambda: self.status().get("lastHandledReconcileAt") == token, f"reconciliation {token}", timeout=120)

    def source_condition(self, kind: str) -> dict:
        return self.source.condition(kind)

    def status(self) -> dict:
        return self.helmrelease.status()

    def condition(self, kind: str = "Ready") -> dict:
        return self.helmrelease.condition(kind)

    def wait(self, check, what: str, timeout: int = 300):
        wait_for(
            check,
            what,
            timeout,
            interval=3,
            explain=lambda: f"HelmRelease status: {self.status()}\n{self.release.describe()}",
        )

    def wait_status(self, check, what: str, timeout: int = 300) -> dict:
        """Waits until CHECK holds for one read of the HelmRelease's status, and returns that status.
        helm-controller writes the conditions and the rest of the status (the history) in two API calls
        (fluxcd/pkg/runtime/patch Helper.Patch), so a condition and the history read one after the other can
        disagree: a test that needs both must check them in the same read."""
        return wait_for(self.status, what, timeout, until=check, interval=3, explain=lambda: self.release.describe())

    def wait_ready(self, revision: int) -> dict:
        """Ready, with Helm release revision REVISION the latest in Flux's history; returns that status."""
        return self.wait_status(
            lambda status: (
                self.helmrelease.condition("Ready", status).get("status") == "True"
                and (status.get("history") or [{}])[0].get("version") == revision
            ),
            f"HelmRelease Ready at release revision {revision}",
        )


@pytest.fixture
def flux_api(kube_api, gitops, namespace, published):
    try:
        client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "helm.toolkit.fluxcd.io", "v2", "flux-system", "helmreleases"
        )
    except client.ApiException as error:
        pytest.fail(f"Flux's HelmRelease API is not installed ({error.reason}): scripts/images/gitops installs it")
    return Flux(kube_api, namespace, published)


@pytest.fixture
def flux(flux_api):
    flux_api.create_source()
    flux_api.wait(
        lambda: flux_api.source_condition("SourceVerified").get("status") == "True",
        "source-controller to verify the chart's cosign signature (OCIRepository SourceVerified)",
        timeout=120,
    )
    return flux_api


def test_source_controller_refuses_a_chart_signed_by_another_key(flux_api, published):
    flux_api.create_source(public_key=published["other_pub"])
    flux_api.wait(
        lambda: flux_api.source_condition("SourceVerified").get("status") == "False",
        "source-controller to refuse the signature (OCIRepository SourceVerified False)",
        timeout=120,
    )
    assert flux_api.source_condition("Ready").get("status") == "False", "an unverified chart must not be served"


def install(flux) -> tuple[dict, Release, str]:
    """The HelmRelease with the cluster's values on PORT, Ready at revision 1, its relay configured."""
    values = cluster_values() | {"relay": {"port": PORT}}
    flux.apply_release(values)
    flux.wait_ready(1)
    release, pod = flux.release, flux.release.pod(0)
    assert release.relay_settings(pod) == (str(PORT), release.service_endpoints(0, PORT))
    return values, release, pod


def finished_tests(snapshot: dict) -> dict:
    """The test hooks a history SNAPSHOT records, when every one of them has finished (else empty)."""
    tests = snapshot.get("testHooks") or {}
    return tests if all(t.get("phase") in ("Succeeded", "Failed") for t in tests.values()) else {}


def test_flux_installs_tests_and_keeps_the_relay_identity_through_drift_correction_and_reinstall(flux):
    values, release, pod = install(flux)
    # the test hooks' phases are in the history, which helm-controller may write a moment after Ready
    status = flux.wait_status(
        lambda status: finished_tests(status["history"][0]),
        "Flux to record the chart's finished helm test in its history (testHooks)",
        timeout=120,
    )
    tests = status["history"][0]["testHooks"]
    assert tests and all(t.get("phase") == "Succeeded" for t in tests.values()), (
        f"Flux should run and record the chart's helm test: {tests}"
    )
    identity, state = release.node_identity(pod), release.state_identities()
    assert state and all(all(keys) for keys in state.values()), "tailscaled should have written its identity"

    # A hand edit of a chart-owned field is drift: helm-controller puts it back. tailscaled's writes to the state
    # Secrets are not (the chart never templates their data), so they survive every correction.
    release.core.patch_namespaced_service(
        pod, release.namespace, {"metadata": {"labels": {"app.kubernetes.io/name": "edited-by-hand"}}}
    )
    flux.wait(
        lambda: (
            # the API server sets it; the client types it Optional (type: ignore below)
            release.core.read_namespaced_service(pod, release.namespace).metadata.labels["app.kubernetes.io/name"]  # type: ignore[index,union-attr]
            == "tailscale-peer-relay"
        ),
        "drift detection to restore the Service's label",
    )
    for _ in range(2):  # two more reconciliations, each with drift detection
        flux.reconcile_now()
    assert flux.condition().get("status") == "True"
    assert release.state_identities() == state, "drift correction changed the relay's state Secrets"
    assert release.node_identity(pod) == identity

    # Deleting the HelmRelease uninstalls the release but keeps the state Secrets (helm.sh/resource-policy: keep);
    # recreating it brings back the same Tailscale node.
    flux.delete_release()
    assert release.state_identities() == state, "helm uninstall by Flux must keep the state Secrets"
    flux.apply_release(values)
    flux.wait_ready(1)
    release.wait_pod_ready(pod)
    assert release.node_identity(pod) == identity, "the recreated release should be the same Tailscale node"
    assert release.relay_settings(pod) == (str(PORT), release.service_endpoints(0, PORT))


def test_a_failing_upgrade_is_rolled_back_by_flux_and_the_relay_keeps_its_settings(flux):
    values, release, pod = install(flux)

    # An upgrade that cannot work: the Service asks for an address outside every MetalLB pool, so it never gets
    # one; Helm's wait gives up after the upgrade timeout (shortened here to keep the test short).
    broken = values | {
        "relay": {"port": PORT + 1},
        "service": {"annotations": {"metallb.io/loadBalancerIPs": "192.0.2.10"}},
        "hook": {**values["hook"], "timeoutSeconds": 20},
    }
    flux.apply_release(broken, upgrade={"timeout": "30s"})

    status = flux.wait_status(
        lambda status: (
            flux.helmrelease.condition("Remediated", status).get("reason") == "RollbackSucceeded"
            and status["history"][0]["version"] > 2
        ),
        "Flux to roll the failed upgrade back (condition Remediated, reason RollbackSucceeded, and the rollback's "
        "release in its history)",
        timeout=420,
    )
    history = [(h["version"], h["status"]) for h in status["history"]]
    assert history[0][1] == "deployed", f"the newest release should be the rollback, deployed: {history}"
    # the rollback restored the old values: port and endpoints as before the upgrade
    wait_for(
        lambda: (release.relay_settings(pod), release.service_endpoints(0, PORT)),
        "the relay to be back on the old port and its Service's addresses after Flux's rollback (seen: its port "
        "and endpoints, the Service's endpoints)",
        120,
        interval=3,
        until=lambda seen: seen[0] == (str(PORT), seen[1]),
    )
    service = release.core.read_namespaced_service(pod, release.namespace)
    # the API server sets it; the client types it Optional (type: ignore below)
    assert "metallb.io/loadBalancerIPs" not in (service.metadata.annotations or {})  # type: ignore[union-attr]
