"""NOTES.txt: how to check the relay, and the policy grant filled in with this release's tags."""

import json
import re
from typing import Any

from support.render import chart_names, notes


def grant_in(text):
    block = re.search(r'"grants": (\[.*?\n  \])', text, re.S)
    assert block, "NOTES should show a grants block"
    return json.loads(block.group(1))


def test_grant_names_the_relay_tags():
    grant = grant_in(notes({"tailscale": {"tags": ["tag:relay", "tag:k8s"]}}))
    assert grant == [
        {"src": ["autogroup:member"], "dst": ["tag:relay", "tag:k8s"], "app": {"tailscale.com/cap/relay": []}}
    ]


def test_untagged_relay_is_called_out():
    text = notes()
    assert "tailscale.tags is empty" in text


def test_tags_with_a_login_server_warn_that_headscale_takes_tags_from_the_key():
    headscale = {"tailscale": {"tags": ["tag:relay"], "loginServer": "https://headscale.example.com"}}
    assert "leave tailscale.tags empty and put the tags on the pre-auth key" in notes(headscale)
    assert "pre-auth key" not in notes({"tailscale": {"tags": ["tag:relay"]}}), (
        "Tailscale takes tags from the key's owner"
    )


def test_check_commands_cover_every_replica():
    text = notes({"replicaCount": 2, "relay": {"port": 61441}})
    assert "relaying UDP port 61441" in text
    names = chart_names()
    for index in range(2):
        pod = names.pod(index)
        assert f"exec {pod} -c tailscale -- tailscale --socket={names.socket} get relay-server-port" in text
        assert f"get service {pod}" in text
        assert f"describe pod {pod}" in text, "the agent's Events are on the pod"
        assert f"get configmap {names.status_configmap(index)} -o jsonpath" in text
    assert "helm test relay --namespace tailnet" in text


def test_notes_say_how_to_remove_the_kept_state():
    text = notes({"replicaCount": 2})
    assert "identities live in the Secrets relay-tailscale-peer-relay-state-<ordinal>." in text
    assert "delete secret relay-tailscale-peer-relay-state-0 relay-tailscale-peer-relay-state-1" in text


def test_node_port_with_local_traffic_policy_is_warned_about():
    node_port: dict[str, Any] = {
        "service": {"type": "NodePort", "nodePort": 30441},
        "relay": {"staticEndpoints": ["192.0.2.20:30441"]},
    }
    assert "after the relay pod moves to another node, traffic is dropped" in notes(node_port)
    cluster = {**node_port, "service": {**node_port["service"], "externalTrafficPolicy": "Cluster"}}
    assert "traffic is dropped" not in notes(cluster)
    assert "traffic is dropped" not in notes()
