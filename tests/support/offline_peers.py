"""Offline peers in the tailnet in a box: Headscale nodes that never run a client, which make the relay's tailnet as
large as a real one (bench/scale.py, tests/integration/test_scale_smoke.py). Offline peers fill a node's network map
as a switched-off laptop does: the control server sends every peer the policy lets it see, online or not.

Two ways to make them:
- through Headscale's API, a few at a time (add_via_api): POST /api/v1/debug/node, which caches a registration with
  fresh node and machine keys, then POST /api/v1/auth/register, which makes the node (headscale v0.29.3
  hscontrol/grpcv1.go DebugCreateNode). Each one sends every connected node a new map: about a second each here.
- in Headscale's SQLite database while Headscale is stopped, thousands in seconds (fill_database): each row a copy of
  the LAN device's own row (its Hostinfo and endpoints, so a peer is as large in a map as a real device) with its own
  keys, addresses and name, last seen an hour ago. Headscale loads its nodes from the database at start.
All of them are named PREFIX-<n>, so that remove_via_api and fill_database(…, 0) find them again."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import sqlite3
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from support.repo import REPO
from support.tailnet import headscale
from support.wait import wait_for

PREFIX = "offline-peer"
DATABASE = "/var/lib/headscale/db.sqlite"
# Addresses far above what Headscale's sequential allocator hands the test's real nodes (100.64.0.x; fd7a:…::x).
FIRST_V4 = ipaddress.IPv4Address("100.96.0.1")
FIRST_V6 = ipaddress.IPv6Address("fd7a:115c:a1e0::9600:1")


def container() -> str:
    return f"{os.environ.get('KIND_CLUSTER_NAME', 'relay-test')}-headscale"


def login_server() -> str:
    return os.environ["LOGIN_SERVER"].rstrip("/")


class HeadscaleAPI:
    """Headscale's REST API with an API key made for this run (headscale apikeys create, an hour)."""

    def __init__(self) -> None:
        self.key = headscale("apikeys", "create", "--expiration", "1h").strip().splitlines()[-1]

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        request = urllib.request.Request(
            f"{login_server()}/api/v1{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"{}")


def user() -> str:
    """The test tailnet's user (the one scripts/images/tailnet made)."""
    users = json.loads(headscale("users", "list", "-o", "json"))
    return users[0]["name"]


def add_via_api(api: HeadscaleAPI, count: int, first: int = 0) -> list[str]:
    """Makes COUNT offline peers through the API, named PREFIX-FIRST…; returns their node ids."""
    owner = user()
    ids = []
    for index in range(first, first + count):
        auth_id = "hskey-authreq-" + secrets.token_urlsafe(18)[:24]  # types.AuthIDLength: the prefix and 24
        api.call("POST", "/debug/node", {"user": owner, "key": auth_id, "name": f"{PREFIX}-{index}"})
        ids.append(api.call("POST", "/auth/register", {"user": owner, "authId": auth_id})["node"]["id"])
    return ids


def remove_via_api(api: HeadscaleAPI, ids: list[str] | None = None) -> int:
    """Deletes the offline peers IDS (by default every node named PREFIX-…); returns how many."""
    if ids is None:
        nodes = api.call("GET", "/node").get("nodes", [])
        ids = [n["id"] for n in nodes if n.get("name", "").startswith(f"{PREFIX}-")]
    for node_id in ids:
        api.call("DELETE", f"/node/{node_id}")
    return len(ids)


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=300).stdout


def fill_database(count: int) -> int:
    """Stops Headscale, makes its database hold exactly COUNT offline peers (copies of the LAN device's row), starts
    it again and waits until it answers, with the DERP delay proxy back in its network namespace. Returns the number
    of nodes Headscale then serves."""
    name = container()
    _docker("stop", "--time", "30", name)
    with tempfile.TemporaryDirectory() as work:
        local = Path(work) / "db.sqlite"
        for suffix in ("", "-wal", "-shm"):
            # a clean stop leaves no -wal or -shm; copy them if they are there, so their changes are not lost
            subprocess.run(["docker", "cp", f"{name}:{DATABASE}{suffix}", f"{local}{suffix}"], capture_output=True)
        db = sqlite3.connect(local)
        try:
            _fill(db, count)
            db.commit()
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        _docker("cp", str(local), f"{name}:{DATABASE}")
        for suffix in ("-wal", "-shm"):
            # empty: whatever an earlier run left must not be replayed over the copy (SQLite ignores an empty WAL)
            empty = Path(work) / f"empty{suffix}"
            empty.write_bytes(b"")
            _docker("cp", str(empty), f"{name}:{DATABASE}{suffix}")
    _docker("start", name)
    subprocess.run([str(REPO / "scripts" / "images" / "derp-delay-up")], check=True, capture_output=True, timeout=300)
    nodes = wait_for(
        lambda: json.loads(headscale("nodes", "list", "-o", "json")),
        "Headscale to answer again after its restart",
        120,
        tolerate=(subprocess.CalledProcessError, json.JSONDecodeError, AssertionError),
    )
    return len(nodes)


def _fill(db: sqlite3.Connection, count: int) -> None:
    db.execute("DELETE FROM nodes WHERE hostname LIKE ?", (f"{PREFIX}-%",))
    if count == 0:
        return
    columns = [row[1] for row in db.execute("PRAGMA table_info(nodes)")]
    # the LAN device's row: the untagged node with the fullest Hostinfo (the relays are tagged, the workload too)
    template = db.execute(
        "SELECT * FROM nodes WHERE deleted_at IS NULL AND (tags IS NULL OR tags = '' OR tags = '[]') "
        "ORDER BY length(host_info) DESC LIMIT 1"
    ).fetchone()
    if template is None:
        raise RuntimeError("Headscale's database has no untagged node to copy (is the LAN device registered?)")
    row = dict(zip(columns, template, strict=True))
    an_hour_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat(sep=" ")
    rows = []
    for index in range(count):
        host_info = json.loads(row["host_info"] or "{}")
        host_info["Hostname"] = f"{PREFIX}-{index}"
        rows.append(
            {
                **row,
                "id": None,
                "machine_key": "mkey:" + secrets.token_hex(32),
                "node_key": "nodekey:" + secrets.token_hex(32),
                "disco_key": "discokey:" + secrets.token_hex(32),
                "host_info": json.dumps(host_info),
                "ipv4": str(FIRST_V4 + index),
                "ipv6": str(FIRST_V6 + index),
                "hostname": f"{PREFIX}-{index}",
                "given_name": f"{PREFIX}-{index}",
                "last_seen": an_hour_ago,
                "created_at": an_hour_ago,
                "updated_at": an_hour_ago,
            }
        )
    names = ", ".join(f"`{c}`" for c in columns)
    marks = ", ".join(f":{c}" for c in columns)
    db.executemany(f"INSERT INTO nodes ({names}) VALUES ({marks})", rows)
