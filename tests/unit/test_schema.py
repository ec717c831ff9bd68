"""values.schema.json: itself valid, strict about keys, types, ranges and endpoint forms."""
import json

import jsonschema
import pytest
import yaml

from chart_render import CHART, RenderError, render

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
        ({"hook": {"image": {"repo": "x"}}}, "/hook/image"),
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
        ({"hook": {"image": {"tag": ""}}}, "/hook/image/tag"),
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
]
GOOD_ENDPOINTS = ["172.16.2.3:61441", "[fdc9:b01a:9d26:0:2::3]:61441", "[::1]:1", "10.0.0.1:65535", "[::ffff:10.0.0.1]:40000"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_malformed_endpoints_fail(endpoint):
    with pytest.raises(RenderError) as failure:
        render({"relay": {"staticEndpoints": [endpoint]}})
    assert "/relay/staticEndpoints/0" in str(failure.value)


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_well_formed_endpoints_render(endpoint):
    assert render({"relay": {"staticEndpoints": [endpoint]}})
