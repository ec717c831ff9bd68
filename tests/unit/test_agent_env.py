"""The agent's environment is written in one place and read in one: the chart renders it with one helper
(relay.agentEnv in chart/templates/_helpers.tpl) for the relay pod's agent container (`relay-agent run`) and for the
hook Job and the helm test Pod (`relay-agent check`), and the agent reads it into one struct (agent/main.go's Env:
each field's env tag names its variable, the commands that read it, and "default" when the chart never sets it).
These tests hold the two to each other: every variable the chart renders for a command is one the agent reads for it,
and every one the agent reads is rendered unless its tag says "default". agent/env_test.go holds the Go code that
reads Env to the same tags."""

from __future__ import annotations

import functools
import re

import pytest

from support.render import all_pod_specs, render
from support.repo import REPO
from support.values import ci_value_names, ci_values

ENV_GO = REPO / "agent" / "main.go"
# a field of Env: `Name envVar `env:"VARIABLE,option,..."``
TAG = re.compile(r'^\s*\w+\s+envVar\s+`env:"([A-Z0-9_]+)((?:,[a-z]+)*)"`', re.MULTILINE)
COMMANDS = ("run", "check")
# relay.agentEnv's optional entries (a private CA for the control server) and static endpoints, besides chart/ci's
# setups.
EVERYTHING = {
    "agent": {"loginServerCA": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
    "relay": {"staticEndpoints": ["192.0.2.10:40000"]},
}
VARIANTS = {"default": {}, "everything": EVERYTHING, **{name: ci_values(name) for name in ci_value_names()}}


@functools.cache
def go_env() -> dict[str, frozenset[str]]:
    """Env's variables as its env tags name them: variable -> the tag's options (commands, "default")."""
    tags = {name: frozenset(options.split(",")[1:]) for name, options in TAG.findall(ENV_GO.read_text())}
    assert tags, f"no field of Env with an env tag found in {ENV_GO.relative_to(REPO)}: has its form changed? ({TAG})"
    return tags


def read_by(command: str, *, default: bool) -> set[str]:
    """The variables the agent reads for COMMAND: those the chart sets (default False), or leaves unset (True)."""
    return {name for name, options in go_env().items() if command in options and ("default" in options) == default}


def agent_envs(manifests: list[dict]) -> dict[str, list[list[dict]]]:
    """The env lists of the agent's containers in a render, by command: run (the relay StatefulSet's agent container),
    check (the hook Job's and the helm test Pod's only container)."""
    envs: dict[str, list[list[dict]]] = {command: [] for command in COMMANDS}
    for where, spec in all_pod_specs(manifests):
        for container in spec["containers"]:
            if where.startswith("StatefulSet/"):
                if container["name"] == "agent":
                    envs["run"].append(container["env"])
            else:
                assert container["args"][0] == "check", f"{where}: {container['name']} runs {container['args']}"
                envs["check"].append(container["env"])
    return envs


@functools.cache
def rendered(variant: str) -> dict[str, list[list[dict]]]:
    return agent_envs(render(VARIANTS[variant]))


def expansion_only(env: list[dict]) -> set[str]:
    """The variables of ENV there for Kubernetes' $(NAME) in the others' values (POD_INDEX in the status ConfigMap's
    name), which the agent need not read."""
    values = " ".join(entry.get("value", "") for entry in env)
    return {entry["name"] for entry in env if f"$({entry['name']})" in values}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("command", COMMANDS)
def test_every_variable_the_chart_sets_for_the_agent_is_one_it_reads(variant, command):
    envs = rendered(variant)[command]
    assert envs, f"the {variant} render has no container running relay-agent {command}"
    for env in envs:
        names = [entry["name"] for entry in env]
        assert len(names) == len(set(names)), f"relay.agentEnv ({command}, {variant}) sets a variable twice: {names}"
        unread = set(names) - read_by(command, default=False) - expansion_only(env)
        assert not unread, (
            f"the chart sets {sorted(unread)} for relay-agent {command} ({variant} values), which agent/main.go's Env "
            f"does not read for {command} (or marks default, the chart leaving it unset): a field with an env tag "
            f"naming it and {command}, or no entry in relay.agentEnv"
        )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_variable_the_agent_reads_is_one_the_chart_sets_unless_left_to_its_default(command):
    ever = {entry["name"] for variant in VARIANTS for env in rendered(variant)[command] for entry in env}
    unset = read_by(command, default=False) - ever
    assert not unset, (
        f"agent/main.go's Env reads {sorted(unset)} for relay-agent {command}, which relay.agentEnv sets in none of "
        f"the renders ({', '.join(sorted(VARIANTS))}): render it there, or mark its env tag default"
    )
    overridden = read_by(command, default=True) & ever
    assert not overridden, (
        f"Env's env tags mark {sorted(overridden)} default (the chart leaving them unset) for relay-agent {command}, "
        "but relay.agentEnv sets them: drop default from the tag"
    )


def test_the_hook_and_the_helm_test_have_one_environment():
    assert len(rendered("default")["check"]) == 2, "the default render has a hook Job and a helm test Pod"
    hook, helm_test = rendered("default")["check"]
    assert hook == helm_test
