"""values.schema.json: itself valid, strict about keys, types, ranges and endpoint forms."""

import ipaddress
import itertools
import json
import random
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from support.helm import run_helm
from support.render import RenderError, render
from support.repo import CHART

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def test_schema_is_valid_against_its_meta_schema():
    jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)


def test_defaults_satisfy_the_schema():
    jsonschema.validate(DEFAULTS, SCHEMA)


def owned_objects(schema, path=()):
    """Every object in the schema that lists its own properties (the chart owns its keys)."""
    if schema.get("type") == "object" and "properties" in schema:
        yield path, schema
        for key, sub in schema["properties"].items():
            yield from owned_objects(sub, path + (key,))


def test_every_object_the_chart_owns_rejects_unknown_keys():
    for path, schema in owned_objects(SCHEMA):
        assert schema.get("additionalProperties") is False, f"{'.'.join(path) or 'top level'} accepts unknown keys"


def test_every_value_in_values_yaml_is_described_by_the_schema():
    def walk(values, schema, path):
        for key, value in values.items():
            assert key in schema["properties"], f"{'.'.join(path + (key,))} is not in values.schema.json"
            sub = schema["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                walk(value, sub, path + (key,))

    walk(DEFAULTS, SCHEMA, ())


@pytest.mark.parametrize(
    "values, where",
    [
        ({"relay": {"prot": 1}}, "/relay"),
        ({"servce": {}}, "additional properties 'servce' not allowed"),
        ({"service": {"annotation": {}}}, "/service"),
        ({"agent": {"image": {"repo": "x"}}}, "/agent/image"),
        ({"auth": {"oauth": {"client_id": "x"}}}, "/auth/oauth"),
        ({"metrics": {"serviceMonitor": {"intervall": "1m"}}}, "/metrics/serviceMonitor"),
    ],
)
def test_misspelt_keys_fail(values, where):
    with pytest.raises(RenderError) as failure:
        render(values)
    assert "additional properties" in str(failure.value) and where in str(failure.value)


@pytest.mark.parametrize(
    "values, where",
    [
        ({"relay": {"port": 0}}, "/relay/port"),
        ({"relay": {"port": 65536}}, "/relay/port"),
        ({"relay": {"port": "61441"}}, "/relay/port"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"service": {"type": "ClusterIP"}}, "/service/type"),
        ({"service": {"externalTrafficPolicy": "Nearest"}}, "/service/externalTrafficPolicy"),
        ({"service": {"ipFamilyPolicy": "DualStack"}}, "/service/ipFamilyPolicy"),
        ({"service": {"ipFamilies": ["IPv4", "IPv4"]}}, "/service/ipFamilies"),
        ({"service": {"ipFamilies": ["ipv6"]}}, "/service/ipFamilies/0"),
        ({"service": {"nodePort": 70000}}, "/service/nodePort"),
        ({"tailscale": {"tags": ["relay"]}}, "/tailscale/tags/0"),
        ({"tailscale": {"loginServer": "headscale.example.com"}}, "/tailscale/loginServer"),
        ({"tailscale": {"hostname": "bad_name"}}, "/tailscale/hostname"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "md5:abc"}}, "/image/digest"),
        ({"hook": {"timeoutSeconds": 1}}, "/hook/timeoutSeconds"),
        ({"agent": {"image": {"digest": "latest"}}}, "/agent/image/digest"),
        ({"agent": {"resyncSeconds": 1}}, "/agent/resyncSeconds"),
        ({"agent": {"loginServerCA": "MIIB...not PEM"}}, "/agent/loginServerCA"),
    ],
)
def test_wrong_types_ranges_and_enums_fail(values, where):
    with pytest.raises(RenderError) as failure:
        render(values)
    assert where in str(failure.value)


BAD_ENDPOINTS = [
    "[fdc9:b01a:9d26:0:2::3]:81441",  # the seed's typo: no such port
    "172.16.2.3:65536",
    "172.16.2.3:0",
    "172.16.2.3",
    "256.1.1.1:61441",
    "fdc9:b01a:9d26:0:2::3:61441",  # IPv6 without brackets
    "[172.16.2.3]:61441",
    "relay.example.com:61441",
    "[fdc9::3]",
    "[1:::2]:61441",  # not IPv6 at all; tailscale would refuse it
    "[1:2:3:4:5:6:7:8:9]:61441",
    "[fe80::1%eth0]:61441",
    " 172.16.2.3:61441",
]
GOOD_ENDPOINTS = [
    "172.16.2.3:61441",
    "[fdc9:b01a:9d26:0:2::3]:61441",
    "[::1]:1",
    "10.0.0.1:65535",
    "[::ffff:10.0.0.1]:40000",
    "[2001:DB8:0:0::1]:40000",
    "[::]:40000",
    "[1::]:40000",
    "[1:2:3:4:5:6:1.2.3.4]:40000",
]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_malformed_endpoints_fail_saying_what_is_expected(endpoint):
    with pytest.raises(RenderError) as failure:
        render({"relay": {"staticEndpoints": [endpoint]}})
    assert (
        f"relay.staticEndpoints: {json.dumps(endpoint)} is not an endpoint: write IPv4:port or [IPv6]:port with a "
        "port from 1 to 65535"
    ) in str(failure.value)
    assert "(25[0-5]" not in str(failure.value), "the message should say it in words, not show the expression"


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_well_formed_endpoints_render(endpoint):
    assert render({"relay": {"staticEndpoints": [endpoint]}})


def endpoint_expression(where: Path) -> re.Pattern[str]:
    """validate.yaml's $endpoint as helm assembles it: the template lines between its two "endpoint expression"
    markers, rendered on their own by the real helm in a throwaway chart under WHERE."""
    text = (CHART / "templates" / "validate.yaml").read_text()
    _, begin, rest = text.partition("{{- /* endpoint expression: begin */}}\n")
    lines, end, _ = rest.partition("{{- /* endpoint expression: end */}}")
    assert begin and end, "validate.yaml marks the lines that build $endpoint"
    chart = where / "endpoint-expression"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: endpoint-expression\nversion: 0.0.0\n")
    (chart / "templates" / "expression.yaml").write_text(lines + "expression: {{ $endpoint | toJson }}\n")
    result = run_helm("template", "expression", str(chart))
    assert result.returncode == 0, result.stderr
    expression = yaml.safe_load(result.stdout)["expression"]
    assert isinstance(expression, str) and expression, result.stdout
    return re.compile(expression)


def parses_like_tailscale(endpoint: str) -> bool:
    """netip.ParseAddrPort without zones, port 1-65535 (Python's ipaddress agrees with Go's netip on these forms)."""
    match = re.fullmatch(r"\[(?P<v6>[^\]%]+)\]:(?P<p6>[1-9][0-9]*)|(?P<v4>[0-9.]+):(?P<p4>[1-9][0-9]*)", endpoint)
    if not match or int(match.group("p6") or match.group("p4")) > 65535:
        return False
    try:
        ipaddress.ip_address(match.group("v6") or match.group("v4"))
    except ValueError:
        return False
    return (match.group("v6") is None) or ":" in match.group("v6")


def test_the_endpoint_expression_agrees_with_an_ip_parser(tmp_path: Path) -> None:
    expression, rng = endpoint_expression(tmp_path), random.Random(7)
    groups = ["", "0", "1", "ab", "ffff", "FFFF", "12345", "g", "1.2.3.4"]
    samples = BAD_ENDPOINTS + GOOD_ENDPOINTS
    for _ in range(5000):
        address = ":".join(rng.choice(groups) for _ in range(rng.randint(0, 9)))
        samples.append(f"[{address}]:{rng.choice([1, 80, 65535, 65536, 0])}")
        samples.append(
            f"{'.'.join(str(rng.randint(0, 300)) for _ in range(rng.choice([3, 4, 5])))}:{rng.randint(0, 70000)}"
        )
    # every count of groups (0-10) before and after "::", and without it, with and without an IPv4 tail: the random
    # addresses above have at most 9 parts, so never write 1:2:3:4:5:6:7:8:: or anything longer
    for before, after in itertools.product(range(11), repeat=2):
        for tail in ([], ["1.2.3.4"]):
            samples.append(f"[{':'.join(['1'] * before)}::{':'.join(['f'] * after + tail)}]:80")
            samples.append(f"[{':'.join(['1'] * before + tail)}]:80")
    wrong = [s for s in samples if bool(expression.fullmatch(s)) != parses_like_tailscale(s)]
    assert not wrong, f"validate.yaml's endpoint expression disagrees with an IP parser on {wrong[:10]}"
