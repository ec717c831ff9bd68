"""One namespaced custom object by API version, plural and name: Flux's HelmRelease and OCIRepository, Argo CD's
Application. What the GitOps tests do with them: create or update the spec, read the status, delete, and see it gone."""

from __future__ import annotations

from kubernetes import client


class CustomObject:
    def __init__(self, kube_api: client.ApiClient, api_version: str, kind: str, plural: str, namespace: str, name: str):
        self.api = client.CustomObjectsApi(kube_api)
        self.api_version, self.kind, self.name = api_version, kind, name
        group, version = api_version.split("/")
        self.path = (group, version, namespace, plural)

    def get(self) -> dict:
        found = self.api.get_namespaced_custom_object(*self.path, self.name)
        assert isinstance(found, dict), f"{self.kind} {self.name} is a JSON object (the client types it object)"
        return found

    def exists(self) -> bool:
        try:
            self.get()
            return True
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise

    def status(self) -> dict:
        """The object's status; empty while it has none, or when it is gone."""
        try:
            return self.get().get("status", {})
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise

    def condition(self, kind: str, status: dict | None = None) -> dict:
        """The condition KIND of STATUS (by default: of the status read now); empty when there is none."""
        status = self.status() if status is None else status
        return next((c for c in status.get("conditions", []) if c["type"] == kind), {})

    def apply(self, spec: dict, metadata: dict | None = None) -> None:
        """Creates the object with SPEC (and METADATA besides its name), or replaces the spec of the existing one."""
        try:
            current = self.get()
        except client.ApiException as error:
            if error.status != 404:
                raise
            self.api.create_namespaced_custom_object(
                *self.path,
                {
                    "apiVersion": self.api_version,
                    "kind": self.kind,
                    "metadata": {"name": self.name, **(metadata or {})},
                    "spec": spec,
                },
            )
            return
        current["spec"] = spec
        self.api.replace_namespaced_custom_object(*self.path, self.name, current)

    def annotate(self, annotations: dict[str, str]) -> None:
        self.api.patch_namespaced_custom_object(*self.path, self.name, {"metadata": {"annotations": annotations}})

    def delete(self) -> None:
        self.api.delete_namespaced_custom_object(*self.path, self.name)
