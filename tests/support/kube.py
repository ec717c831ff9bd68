"""What the harness reads off the Kubernetes client's objects. The client's models type every field Optional (the API
schema leaves most fields optional in what one sends); in the objects the API server returns, the ones read here are
set: an object's metadata and name, a pod's spec, node and status, a Service's status. These functions say so where a
field is read (for the type checker too) and fail naming the field when the server did leave one unset."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:  # for the annotations only: support.namespaces, which the unit tests import, imports no client
    from kubernetes import client

T = TypeVar("T")


class HasMetadata(Protocol):
    @property
    def metadata(self) -> client.V1ObjectMeta | None: ...


def present(value: T | None, what: str) -> T:
    """VALUE, which the API server sets (WHAT names it for the failure when it did not)."""
    assert value is not None, f"the API server left {what} unset"
    return value


def metadata(found: HasMetadata) -> client.V1ObjectMeta:
    return present(found.metadata, f"the metadata of a {type(found).__name__}")


def name_of(found: HasMetadata) -> str:
    return present(metadata(found).name, f"the name of a {type(found).__name__}")


def pod_status(pod: client.V1Pod) -> client.V1PodStatus:
    return present(pod.status, f"the status of pod {name_of(pod)}")


def node_name(pod: client.V1Pod) -> str:
    """The node POD is scheduled on (the scheduler's choice: set once the pod is scheduled)."""
    return present(present(pod.spec, f"the spec of pod {name_of(pod)}").node_name, f"the node of pod {name_of(pod)}")


def container_status(pod: client.V1Pod, container: str) -> client.V1ContainerStatus:
    """The status of POD's CONTAINER (StopIteration when it has none yet)."""
    return next(s for s in pod_status(pod).container_statuses or [] if s.name == container)


def load_balancer_ingress(service: client.V1Service) -> list[client.V1LoadBalancerIngress]:
    """The addresses SERVICE's load balancer gave it (none yet: empty)."""
    balancer = present(service.status, f"the status of service {name_of(service)}").load_balancer
    return (balancer.ingress if balancer else None) or []


def event_time(event: client.CoreV1Event) -> datetime.datetime:
    """When EVENT last happened: its last timestamp, or (events.k8s.io's events) its event time, or its creation."""
    return present(
        event.last_timestamp or event.event_time or metadata(event).creation_timestamp,
        f"the time of event {metadata(event).name}",
    )
