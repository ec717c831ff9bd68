"""Argo CD, for real: Argo CD's own application controller and repo-server (scripts/images/argocd) sync the chart from
the classic repository scripts/release wrote, with the README's example values (an existing auth Secret, tag:relay)
plus the test cluster's login server and images, automated sync with prune and selfHeal. Argo CD renders with
`helm template`, runs post-install/post-upgrade as a PostSync hook, never creates the helm test Pod and prunes what
a render no longer has: the relay must stay configured and keep its identity through all of it."""

from __future__ import annotations

import datetime
import os

import pytest
from kubernetes import client

from support.cluster import cluster_values
from support.custom_object import CustomObject
from support.release import Release
from support.wait import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.gitops]

ARGOCD_NAMESPACE = "argocd"
PORT = 41641


def readme_values() -> dict:
    """The README's Argo CD example values, with this cluster's control server, images and DERP setting. The test
    control server is Headscale, which refuses a pre-auth key registration that asks for tags (hscontrol/state/
    state.go: "PreAuthKey nodes get their tags from the key itself"): the key in the Secret carries tag:relay and
    tailscale.tags stays empty, as the README's Headscale section says."""
    values = cluster_values()
    values["auth"] = {"existingSecret": "tailscale-auth"}
    values["relay"] = {"port": PORT}
    return values


class ArgoApp:
    """One Argo CD Application that deploys the chart into a test namespace."""

    def __init__(self, kube_api, namespace: str, published: dict):
        self.core = client.CoreV1Api(kube_api)
        self.namespace = namespace
        self.published = published
        self.release = Release(kube_api, namespace)
        self.application = CustomObject(
            kube_api, "argoproj.io/v1alpha1", "Application", "applications", ARGOCD_NAMESPACE, f"relay-{namespace}"
        )

    def apply(self, values: dict):
        self.application.apply(
            {
                "project": "default",
                "source": {
                    "repoURL": f"{self.published['base_url']}/charts",
                    "chart": "tailscale-peer-relay",
                    "targetRevision": self.published["version"],
                    "helm": {"releaseName": "relay", "valuesObject": values},
                },
                "destination": {"server": "https://kubernetes.default.svc", "namespace": self.namespace},
                "syncPolicy": {"automated": {"prune": True, "selfHeal": True}},
                # the finalizer makes deleting the Application delete what it deployed (except what it must keep)
            },
            metadata={"finalizers": ["resources-finalizer.argocd.argoproj.io"]},
        )

    def delete(self):
        self.application.delete()
        self.wait(lambda: not self.application.exists(), "the Application (and what it deployed) to be deleted")

    def status(self) -> dict:
        return self.application.status()

    def wait(self, check, what: str, timeout: int = 300):
        def explain():
            status = self.status()
            summary = {k: status.get(k) for k in ("sync", "health", "conditions", "operationState")}
            return f"Application status: {summary}\n{self.release.describe()}"

        wait_for(check, what, timeout, interval=3, explain=explain)

    @staticmethod
    def synced_and_healthy(status: dict) -> bool:
        """Synced, Healthy and the last operation Succeeded, in one read of the Application's STATUS."""
        return (
            status.get("sync", {}).get("status") == "Synced"
            and status.get("health", {}).get("status") == "Healthy"
            and status.get("operationState", {}).get("phase") == "Succeeded"
        )

    def wait_synced(self, since: datetime.datetime | None = None):
        """Synced, Healthy, and the last sync operation (finished after SINCE) Succeeded."""

        def done():  # one read: a sync that starts between two reads would mix two operations
            status = self.status()
            finished = status.get("operationState", {}).get("finishedAt")
            return (
                self.synced_and_healthy(status)
                and finished
                and (since is None or datetime.datetime.fromisoformat(finished.replace("Z", "+00:00")) >= since)
            )

        self.wait(done, "the Application to be Synced and Healthy after a successful sync")

    def hook_results(self) -> list[dict]:
        """The PostSync hook resources of the last sync operation, as Argo CD recorded them."""
        resources = self.status().get("operationState", {}).get("syncResult", {}).get("resources", [])
        return [r for r in resources if r.get("hookType") == "PostSync"]

    def request_refresh(self, kind: str = "hard"):
        self.application.annotate({"argocd.argoproj.io/refresh": kind})
        self.wait(
            lambda: "argocd.argoproj.io/refresh" not in (self.application.get()["metadata"].get("annotations") or {}),
            f"Argo CD to handle the {kind} refresh",
        )


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@pytest.fixture
def app(kube_api, gitops, namespace, published):
    try:
        client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "argoproj.io", "v1alpha1", ARGOCD_NAMESPACE, "applications"
        )
    except client.ApiException as error:
        pytest.fail(f"Argo CD's Application API is not installed ({error.reason}): scripts/images/deploy installs it")
    cluster_values()  # fails (in CI) or skips with a hint when the cluster's settings are missing
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="tailscale-auth"), string_data={"TS_AUTHKEY": os.environ["AUTHKEY"]}
        ),
    )
    application = ArgoApp(kube_api, namespace, published)
    yield application
    try:
        application.delete()
    except client.ApiException:
        pass


def test_argocd_syncs_the_chart_runs_the_hook_and_keeps_the_relay_through_refresh_selfheal_and_value_changes(app):
    values = readme_values()
    app.apply(values)
    app.wait_synced()
    release = app.release
    pod = release.pod(0)
    assert release.relay_settings(pod) == (str(PORT), release.service_endpoints(0, PORT))

    (hook,) = app.hook_results()
    assert hook["kind"] == "Job" and hook["hookPhase"] == "Succeeded", f"the PostSync hook should succeed: {hook}"
    with pytest.raises(client.ApiException) as gone:
        client.BatchV1Api(release.core.api_client).read_namespaced_job(hook["name"], app.namespace)
    assert gone.value.status == 404, "the succeeded hook Job should be deleted (hook-succeeded)"
    pods = [p.metadata.name for p in release.core.list_namespaced_pod(app.namespace).items]
    assert release.names.test_pod not in pods, "Argo CD never creates the helm test Pod"

    identity, state = release.node_identity(pod), release.state_identities()
    assert state and all(all(keys) for keys in state.values()), "tailscaled should have written its identity"

    # A hard refresh re-renders the chart and compares: nothing to do, the keys stay.
    app.request_refresh("hard")
    app.wait_synced()
    assert release.state_identities() == state and release.node_identity(pod) == identity

    # selfHeal: a hand edit of a chart-owned field is put back by a resource-scoped sync, which runs no PostSync hook.
    # The relay's agent, not the hook, keeps the settings: they stay right.
    before = now()
    release.core.patch_namespaced_service(
        pod, app.namespace, {"metadata": {"labels": {"app.kubernetes.io/name": "edited-by-hand"}}}
    )
    app.wait(
        lambda: (
            release.core.read_namespaced_service(pod, app.namespace).metadata.labels["app.kubernetes.io/name"]
            == "tailscale-peer-relay"
        ),
        "selfHeal to restore the Service's label",
    )
    app.wait_synced()
    assert release.hook_jobs_created_since(before) == [], "a selfHeal sync should not run the PostSync hook"
    assert release.state_identities() == state and release.node_identity(pod) == identity
    assert release.relay_settings(pod) == (str(PORT), release.service_endpoints(0, PORT))

    # A values change in the source: a full sync, the hook runs again and the relay follows.
    before = now()
    app.apply(values | {"relay": {"port": PORT + 1}})
    app.wait_synced(since=before)
    assert release.hook_jobs_created_since(before), "the PostSync hook should run again for a new revision"
    (hook,) = app.hook_results()
    assert hook["hookPhase"] == "Succeeded"
    assert release.relay_settings(pod) == (str(PORT + 1), release.service_endpoints(0, PORT + 1))
    assert release.node_identity(pod) == identity


def test_argocd_keeps_state_secrets_on_scale_down_and_deletion_and_returns_as_the_same_nodes(app):
    values = readme_values() | {"replicaCount": 2}
    app.apply(values)
    app.wait_synced()
    release = app.release
    identities = [release.node_identity(release.pod(i)) for i in range(2)]
    state = release.state_identities()
    assert len(state) == 2 and all(all(keys) for keys in state.values())

    # replicaCount 2 -> 1 with automated prune: the second state Secret is not pruned (Prune=false) and the
    # Application stays Synced (IgnoreExtraneous).
    before = now()
    app.apply(values | {"replicaCount": 1})
    app.wait_synced(since=before)
    app.wait(
        lambda: (
            len(
                release.core.list_namespaced_pod(
                    app.namespace, label_selector="app.kubernetes.io/component=relay"
                ).items
            )
            == 1
        ),
        "the second relay pod to go",
    )
    assert release.state_identities() == state, "Argo CD pruned a state Secret: the replica's node identity is lost"

    # Deleting the Application deletes the release's resources but keeps the state Secrets
    # (helm.sh/resource-policy: keep is honoured on deletion); recreating it brings back the same nodes.
    app.delete()
    assert release.state_identities() == state, "deleting the Application must keep the state Secrets"
    app.apply(values)
    app.wait_synced()
    for index in range(2):
        release.wait_pod_ready(release.pod(index))
        assert release.node_identity(release.pod(index)) == identities[index], (
            f"replica {index} should come back as the same Tailscale node"
        )
