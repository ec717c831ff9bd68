# shellcheck shell=sh disable=SC2034 # the variables set here are read by the scripts that source this file
# Sourced by relay-hook.sh and relay-settings.sh: the endpoints a relay advertises when relay.staticEndpoints
# is empty, from its Service's load balancer. Needs kubectl, NAMESPACE and RELAY_PORT.

# service_endpoints SERVICE: sets $endpoints to the Service's LoadBalancer IPs with RELAY_PORT, both families
# ("IPv4:port,[IPv6]:port"); or fails with $reason set, and $hostnames_only=yes when the load balancer gave
# only hostnames (a relay advertises IP addresses: nothing to wait for).
service_endpoints() {
  hostnames_only=no
  svc=$(kubectl --namespace "$NAMESPACE" get service "$1" \
    -o jsonpath='{.spec.ipFamilyPolicy}|{range .status.loadBalancer.ingress[*]}{.ip} {end}|{range .status.loadBalancer.ingress[*]}{.hostname} {end}' 2>&1) ||
    { reason="cannot read Service $1: $svc"; return 1; }
  policy="${svc%%|*}"; rest="${svc#*|}"; ips="${rest%%|*}"; names="${rest#*|}"; names="${names% }"
  if [ -z "${ips# }" ]; then
    if [ -n "${names# }" ]; then
      hostnames_only=yes
      reason="Service $1 got only hostnames ($names) from its load balancer; a relay advertises IP addresses: set relay.staticEndpoints"
    else
      reason="waiting for Service $1 to get a LoadBalancer address"
    fi
    return 1
  fi
  endpoints=""; have_v4=no; have_v6=no
  for ip in $ips; do
    case "$ip" in
      *:*) endpoints="$endpoints,[$ip]:$RELAY_PORT"; have_v6=yes ;;
      *) endpoints="$endpoints,$ip:$RELAY_PORT"; have_v4=yes ;;
    esac
  done
  endpoints="${endpoints#,}"
  # A RequireDualStack Service is not done until it has an address of each family.
  if [ "$policy" = RequireDualStack ] && { [ "$have_v4" = no ] || [ "$have_v6" = no ]; }; then
    reason="waiting for Service $1 (RequireDualStack) to get an address of each family; has $endpoints"
    return 1
  fi
}
