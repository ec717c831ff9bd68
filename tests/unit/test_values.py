"""Every value in values.yaml changes the rendered manifests: none is silently ignored."""

import pytest
import yaml

from support.render import helm_text
from support.repo import CHART
from support.values import deep_merge, value_paths

TAGS = {"tailscale": {"tags": ["tag:relay"]}}
EXISTING = {"auth": {"authKey": "", "existingSecret": "ts-auth"}}
OAUTH = {"auth": {"authKey": "", "oauth": {"clientId": "id", "clientSecret": "secret"}}, **TAGS}
OAUTH_EXISTING = {"auth": {"authKey": "", "oauth": {"existingSecret": "oauth"}}, **TAGS}
MONITOR = {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}
MONITOR_ARGS = (
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
)
RULE = {"metrics": {"enabled": True, "prometheusRule": {"enabled": True}}}
DASHBOARD = {"metrics": {"enabled": True, "dashboard": {"enabled": True}}}
NETPOL = {"networkPolicy": {"enabled": True}}
TWO = {"replicaCount": 2}

# value path -> (context values, the change, extra helm args)
CHANGES: dict[str, tuple[dict, dict]] = {
    "nameOverride": ({}, {"nameOverride": "edge"}),
    "fullnameOverride": ({}, {"fullnameOverride": "edge-relay"}),
    "replicaCount": ({}, {"replicaCount": 2}),
    "image.repository": ({}, {"image": {"repository": "registry.example/tailscale"}}),
    "image.tag": ({}, {"image": {"tag": "v1.100.0"}}),
    "image.digest": ({}, {"image": {"digest": "sha256:" + "c" * 64}}),
    "image.pullPolicy": ({}, {"image": {"pullPolicy": "Always"}}),
    "imagePullSecrets": ({}, {"imagePullSecrets": [{"name": "regcred"}]}),
    "relay.port": ({}, {"relay": {"port": 61441}}),
    "relay.staticEndpoints": ({}, {"relay": {"staticEndpoints": ["192.0.2.1:40000"]}}),
    "tailscale.hostname": ({}, {"tailscale": {"hostname": "edge"}}),
    "tailscale.tags": ({}, TAGS),
    "tailscale.loginServer": ({}, {"tailscale": {"loginServer": "https://hs.example"}}),
    "tailscale.extraArgs": ({}, {"tailscale": {"extraArgs": ["--advertise-connector"]}}),
    "tailscale.daemonExtraArgs": ({}, {"tailscale": {"daemonExtraArgs": ["--verbose=1"]}}),
    "tailscale.userspace": ({}, {"tailscale": {"userspace": False}}),
    "tailscale.acceptDNS": ({}, {"tailscale": {"acceptDNS": True}}),
    "tailscale.logUpload": ({}, {"tailscale": {"logUpload": "disabled"}}),
    "auth.authKey": ({}, {"auth": {"authKey": "tskey-auth-other"}}),
    "auth.existingSecret": (EXISTING, {"auth": {"existingSecret": "other"}}),
    "auth.existingSecretKey": (EXISTING, {"auth": {"existingSecretKey": "key"}}),
    "auth.oauth.clientId": (OAUTH, {"auth": {"oauth": {"clientId": "other"}}}),
    "auth.oauth.clientSecret": (OAUTH, {"auth": {"oauth": {"clientSecret": "other"}}}),
    "auth.oauth.existingSecret": (OAUTH_EXISTING, {"auth": {"oauth": {"existingSecret": "other"}}}),
    "auth.oauth.clientIdKey": (OAUTH_EXISTING, {"auth": {"oauth": {"clientIdKey": "id"}}}),
    "auth.oauth.clientSecretKey": (OAUTH_EXISTING, {"auth": {"oauth": {"clientSecretKey": "secret"}}}),
    "auth.oauth.ephemeral": (OAUTH, {"auth": {"oauth": {"ephemeral": True}}}),
    "auth.oauth.preauthorized": (OAUTH, {"auth": {"oauth": {"preauthorized": False}}}),
    "service.type": (
        {"relay": {"staticEndpoints": ["192.0.2.1:30001"]}, "service": {"nodePort": 30001}},
        {"service": {"type": "NodePort"}},
    ),
    "service.annotations": ({}, {"service": {"annotations": {"a": "b"}}}),
    "service.labels": ({}, {"service": {"labels": {"a": "b"}}}),
    "service.loadBalancerClass": ({}, {"service": {"loadBalancerClass": "example.com/lb"}}),
    "service.loadBalancerSourceRanges": ({}, {"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}),
    "service.externalTrafficPolicy": ({}, {"service": {"externalTrafficPolicy": "Cluster"}}),
    "service.ipFamilyPolicy": ({}, {"service": {"ipFamilyPolicy": "PreferDualStack"}}),
    "service.ipFamilies": ({}, {"service": {"ipFamilies": ["IPv6"]}}),
    "service.nodePort": ({}, {"service": {"nodePort": 30001}}),
    "agent.image.repository": ({}, {"agent": {"image": {"repository": "example/relay-agent"}}}),
    "agent.image.tag": ({}, {"agent": {"image": {"tag": "0.4.0-rc1"}}}),
    "agent.image.digest": ({}, {"agent": {"image": {"digest": "sha256:" + "d" * 64}}}),
    "agent.image.pullPolicy": ({}, {"agent": {"image": {"pullPolicy": "Never"}}}),
    "agent.port": ({}, {"agent": {"port": 9010}}),
    "agent.resyncSeconds": ({}, {"agent": {"resyncSeconds": 60}}),
    "agent.reloginAfterSeconds": ({}, {"agent": {"reloginAfterSeconds": 0}}),
    "agent.loginServerCA": (
        {},
        {"agent": {"loginServerCA": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}},
    ),
    "agent.resources": ({}, {"agent": {"resources": {"limits": {"memory": "48Mi"}}}}),
    "hook.timeoutSeconds": ({}, {"hook": {"timeoutSeconds": 60}}),
    "hook.imagePullGraceSeconds": ({}, {"hook": {"imagePullGraceSeconds": 15}}),
    "hook.weight": ({}, {"hook": {"weight": 1}}),
    "hook.resources": ({}, {"hook": {"resources": {"limits": {"memory": "64Mi"}}}}),
    "hook.podAnnotations": ({}, {"hook": {"podAnnotations": {"a": "b"}}}),
    "serviceAccount.create": ({"serviceAccount": {"name": "mine"}}, {"serviceAccount": {"create": False}}),
    "serviceAccount.name": ({}, {"serviceAccount": {"name": "mine"}}),
    "serviceAccount.annotations": ({}, {"serviceAccount": {"annotations": {"a": "b"}}}),
    "rbac.create": ({}, {"rbac": {"create": False}}),
    "rbac.relayRecreatesStateSecrets": ({}, {"rbac": {"relayRecreatesStateSecrets": True}}),
    "rbac.refuseScalingOutsideHelm": ({}, {"rbac": {"refuseScalingOutsideHelm": True}}),
    "health.port": ({}, {"health": {"port": 9100}}),
    "metrics.enabled": ({}, {"metrics": {"enabled": True}}),
    "metrics.serviceMonitor.enabled": (
        {"metrics": {"enabled": True}},
        {"metrics": {"serviceMonitor": {"enabled": True}}},
    ),
    "metrics.serviceMonitor.interval": (MONITOR, {"metrics": {"serviceMonitor": {"interval": "1m"}}}),
    "metrics.serviceMonitor.labels": (MONITOR, {"metrics": {"serviceMonitor": {"labels": {"release": "prom"}}}}),
    "metrics.prometheusRule.enabled": ({"metrics": {"enabled": True}}, RULE),
    "metrics.prometheusRule.labels": (RULE, {"metrics": {"prometheusRule": {"labels": {"role": "alert-rules"}}}}),
    "metrics.prometheusRule.alertLabels": (RULE, {"metrics": {"prometheusRule": {"alertLabels": {"team": "net"}}}}),
    "metrics.dashboard.enabled": ({"metrics": {"enabled": True}}, DASHBOARD),
    "metrics.dashboard.labels": (DASHBOARD, {"metrics": {"dashboard": {"labels": {"grafana_dashboard": "relays"}}}}),
    "metrics.dashboard.annotations": (DASHBOARD, {"metrics": {"dashboard": {"annotations": {"folder": "Network"}}}}),
    "networkPolicy.enabled": ({}, {"networkPolicy": {"enabled": True}}),
    "networkPolicy.relayFrom": (NETPOL, {"networkPolicy": {"relayFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}),
    "networkPolicy.healthFrom": (NETPOL, {"networkPolicy": {"healthFrom": [{"podSelector": {}}]}}),
    "networkPolicy.apiServerCIDRs": (NETPOL, {"networkPolicy": {"apiServerCIDRs": ["10.96.0.1/32"]}}),
    "networkPolicy.apiServerPorts": (NETPOL, {"networkPolicy": {"apiServerPorts": [8443]}}),
    "podDisruptionBudget.enabled": (TWO, {"podDisruptionBudget": {"enabled": False}}),
    "podDisruptionBudget.maxUnavailable": (TWO, {"podDisruptionBudget": {"maxUnavailable": 2}}),
    "commonLabels": ({}, {"commonLabels": {"team": "net"}}),
    "podAnnotations": ({}, {"podAnnotations": {"a": "b"}}),
    "podLabels": ({}, {"podLabels": {"a": "b"}}),
    "podSecurityContext": ({}, {"podSecurityContext": {"runAsUser": 2000}}),
    "securityContext": ({}, {"securityContext": {"runAsGroup": 3000}}),
    "resources": ({}, {"resources": {"limits": {"memory": "512Mi"}}}),
    "readinessProbe.initialDelaySeconds": ({}, {"readinessProbe": {"initialDelaySeconds": 10}}),
    "readinessProbe.periodSeconds": ({}, {"readinessProbe": {"periodSeconds": 30}}),
    "readinessProbe.failureThreshold": ({}, {"readinessProbe": {"failureThreshold": 9}}),
    "extraEnv": ({}, {"extraEnv": [{"name": "A", "value": "b"}]}),
    "nodeSelector": ({}, {"nodeSelector": {"a": "b"}}),
    "tolerations": ({}, {"tolerations": [{"operator": "Exists"}]}),
    "affinity": ({}, {"affinity": {"podAntiAffinity": {}}}),
    "topologySpreadConstraints": (
        {},
        {
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
            ]
        },
    ),
    "priorityClassName": ({}, {"priorityClassName": "high"}),
    "terminationGracePeriodSeconds": ({}, {"terminationGracePeriodSeconds": 5}),
    "test.enabled": ({}, {"test": {"enabled": False}}),
}


def test_every_value_has_a_case():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = sorted(set(value_paths(values)) - set(CHANGES))
    assert not missing, f"add a case to CHANGES for {missing}"


@pytest.mark.parametrize("path", sorted(CHANGES))
def test_value_changes_the_render(path):
    context, change = CHANGES[path]
    args = MONITOR_ARGS if path.startswith(("metrics.serviceMonitor", "metrics.prometheusRule")) else ()
    before = helm_text(context, args=args)
    after = helm_text(deep_merge(context, change), args=args)
    assert before != after, f"setting {path} changes nothing in the rendered chart"
