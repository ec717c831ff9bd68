#!/usr/bin/env python3
"""A stand-in for kubectl that serves the hook script from a JSON world file (FAKE_KUBE_WORLD).

It knows only the calls relay-hook.sh makes, answers the jsonpath queries by what they ask for,
records every call in the world's "calls" list, and lets tests script changes over time
("ready_after", "ips_after": the number of polls before the pod is Ready / the Service has addresses).
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
        ready = "True" if poll(f"pod/{name}") > pod.get("ready_after", 0) and pod.get("ready", True) else "False"
        words = [pod["revision"], ready] + (["2026-01-01T00:00:00Z"] if pod.get("deleting") else [])
        finish(" ".join(words))
    if kind == "service":
        svc = world["services"][name]
        if "ipFamilyPolicy" in jsonpath:
            finish(svc.get("policy", "SingleStack"))
        if jsonpath == "{.status}":
            finish(json.dumps({"loadBalancer": {}}))
        assigned = poll(f"service/{name}/{'ip' if '.ip}' in jsonpath else 'hostname'}") > svc.get("ips_after", 0)
        values = svc.get("ips" if ".ip}" in jsonpath else "hostnames", []) if assigned else []
        finish("".join(v + " " for v in values))
    finish(code=2, err=f"fake kubectl: unsupported get {args}\n")

if verb == "logs":
    finish(world["pods"][args[1]].get("log", "") + "\n")

if verb == "exec":
    pod = world["pods"][args[1]]
    command = args[args.index("--") + 1:]
    assert command[0] == "tailscale" and command[1].startswith("--socket="), command
    prefs = pod.setdefault("prefs", {"port": "", "endpoints": ""})
    if command[2:] == ["get", "relay-server-port"]:
        finish(prefs["port"] + "\n")
    if command[2:] == ["get", "relay-server-static-endpoints"]:
        finish(prefs["endpoints"] + "\n")
    if command[2] == "set":
        if pod.get("refuse_set"):
            finish(code=1, err="invalid value for --relay-server-static-endpoints\n")
        flags = dict(a[2:].split("=", 1) for a in command[3:])
        if not pod.get("ignore_set"):
            prefs["port"] = flags["relay-server-port"]
            prefs["endpoints"] = flags["relay-server-static-endpoints"]
        finish()
finish(code=2, err=f"fake kubectl: unsupported {args}\n")
