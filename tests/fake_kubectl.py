#!/usr/bin/env python3
"""A stand-in for kubectl that serves the hook and relay-settings scripts from a JSON world file (FAKE_KUBE_WORLD).

It knows only the calls relay-hook.sh and relay-settings.sh make, answers the jsonpath queries by what they ask
for, records every call in the world's "calls" list, and lets tests script changes over time ("ready_after",
"ips_after": the number of polls before the relay container is Ready / the Service has addresses). Like the real
API under the chart's RBAC, it refuses exec and answers NotFound for objects the world does not have.
"""
import json
import os
import sys

world_path = os.environ["FAKE_KUBE_WORLD"]
with open(world_path) as handle:
    world = json.load(handle)

args = sys.argv[1:]
world.setdefault("calls", []).append(args)
polls = world.setdefault("polls", {})


def save():
    with open(world_path, "w") as handle:
        json.dump(world, handle)


def finish(out="", code=0, err=""):
    save()
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


def poll(key):
    polls[key] = polls.get(key, 0) + 1
    return polls[key]


if args[:1] == ["--namespace"]:
    args = args[2:]
verb = args[0]

if verb == "get":
    kind, name = args[1], args[2]
    jsonpath = next((a.split("=", 1)[1] for a in args if a.startswith("jsonpath=")), "")
    if "-o" in args:
        jsonpath = args[args.index("-o") + 1].split("=", 1)[1]
    if kind == "statefulset":
        sts = world["statefulset"]
        finish(f'{sts["generation"]} {sts["observedGeneration"]} {sts["updateRevision"]}')
    if kind == "pod":
        pod = world["pods"].get(name)
        if pod is None:
            finish(code=1, err=f'Error from server (NotFound): pods "{name}" not found\n')
        ready = "true" if poll(f"pod/{name}") > pod.get("ready_after", 0) and pod.get("ready", True) else "false"
        words = [pod["revision"], ready] + (["2026-01-01T00:00:00Z"] if pod.get("deleting") else [])
        finish(" ".join(words))
    if kind == "service":
        svc = world["services"].get(name)
        if svc is None:
            finish(code=1, err=f'Error from server (NotFound): services "{name}" not found\n')
        if jsonpath == "{.status}":
            finish(json.dumps({"loadBalancer": {}}))

        def listed(field):
            assigned = poll(f"service/{name}/{field}") > svc.get("ips_after", 0)
            return "".join(v + " " for v in svc.get(field, [])) if assigned else ""

        if "|" in jsonpath:  # relay-settings.sh: policy|ips|hostnames in one call
            finish(f'{svc.get("policy", "SingleStack")}|{listed("ips")}|{listed("hostnames")}')
        if "ipFamilyPolicy" in jsonpath:
            finish(svc.get("policy", "SingleStack"))
        finish(listed("ips" if ".ip}" in jsonpath else "hostnames"))
    finish(code=2, err=f"fake kubectl: unsupported get {args}\n")

if verb == "logs":
    pod = world["pods"][args[1]]
    container = args[args.index("-c") + 1] if "-c" in args else "tailscale"
    finish(pod.get("sidecar_log" if container == "relay-settings" else "log", "") + "\n")

if verb == "exec":
    # The chart's Roles grant no pods/exec.
    finish(code=1, err=f'Error from server (Forbidden): pods "{args[1]}" is forbidden: User '
                       '"system:serviceaccount:tailnet:relay-hook" cannot create resource "pods/exec"\n')
finish(code=2, err=f"fake kubectl: unsupported {args}\n")
