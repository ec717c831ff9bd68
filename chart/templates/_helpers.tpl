{{/* Names ----------------------------------------------------------------- */}}

{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fullname: the prefix of every resource name. Kept to 50 characters so that
"<fullname>-state-<ordinal>" and pod names stay within DNS label limits.
*/}}
{{- define "relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of replica N's pod and of its relay Service (the same name, different kinds). */}}
{{- define "relay.replicaName" -}}
{{- printf "%s-%d" (include "relay.fullname" .root) (int .index) }}
{{- end }}

{{/* Name of replica N's state Secret: its Tailscale identity, never the auth key. .index is a number, or
"$(POD_INDEX)" in the pod template (the container's environment expands it). */}}
{{- define "relay.stateSecretName" -}}
{{- printf "%s-state-%v" (include "relay.fullname" .root) .index }}
{{- end }}

{{/* Name of replica N's status ConfigMap: where its agent reports, for the hook and helm test. .index as above. */}}
{{- define "relay.statusConfigMapName" -}}
{{- printf "%s-status-%v" (include "relay.fullname" .root) .index }}
{{- end }}

{{/* Comma-separated names of every replica by .name ("relay.replicaName" or "relay.statusConfigMapName"). */}}
{{- define "relay.replicaNames" -}}
{{- $names := list }}
{{- range $index := until (int .root.Values.replicaCount) }}
{{- $names = append $names (include $.name (dict "root" $.root "index" $index)) }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{- define "relay.headlessServiceName" -}}
{{- printf "%s-headless" (include "relay.fullname" .) }}
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: with serviceAccount.create false, name the existing ServiceAccount the relay runs as (the namespace's default one would be granted the relays' state Secrets)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay.hookName" -}}
{{- printf "%s-hook" (include "relay.fullname" .) }}
{{- end }}

{{/* Name of the helm test Pod. */}}
{{- define "relay.testName" -}}
{{- printf "%s-test" (include "relay.fullname" .) }}
{{- end }}

{{- define "relay.authSecretName" -}}
{{- printf "%s-auth" (include "relay.fullname" .) }}
{{- end }}

{{/* Labels ---------------------------------------------------------------- */}}

{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tailscale-peer-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: relay, hook or test. Call with (dict "root" $ "component" "relay"). */}}
{{- define "relay.componentLabels" -}}
{{ include "relay.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "relay.componentSelectorLabels" -}}
{{ include "relay.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images ---------------------------------------------------------------- */}}

{{/* repository[:tag][@digest] from an image block and a default tag. */}}
{{- define "relay.imageRef" -}}
{{- $ref := printf "%s:%s" .image.repository (default .defaultTag .image.tag) }}
{{- if .image.digest }}
{{- $ref = printf "%s@%s" $ref .image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "relay.image" -}}
{{- include "relay.imageRef" (dict "image" .Values.image "defaultTag" (printf "v%s" .Chart.AppVersion)) }}
{{- end }}

{{/* The chart's own agent image: the relay pod's agent, the hook and helm test. Default tag: the chart version. */}}
{{- define "relay.agentImage" -}}
{{- include "relay.imageRef" (dict "image" .Values.agent.image "defaultTag" .Chart.Version) }}
{{- end }}

{{/* Relay settings ------------------------------------------------------------ */}}

{{/* Base Tailscale hostname; replicas > 1 append "-<ordinal>". */}}
{{- define "relay.hostname" -}}
{{- default (include "relay.fullname" .) .Values.tailscale.hostname }}
{{- end }}

{{/* "true" when tailscaled uploads its logs to log.tailscale.com (tailscale.logUpload; "auto": only with Tailscale's
own control plane), else "false". */}}
{{- define "relay.uploadsLogs" -}}
{{- $mode := .Values.tailscale.logUpload }}
{{- if eq $mode "auto" }}
{{- ternary "false" "true" (ne .Values.tailscale.loginServer "") }}
{{- else }}
{{- ternary "true" "false" (eq $mode "enabled") }}
{{- end }}
{{- end }}

{{/* Arguments for the first "tailscale up" (TS_EXTRA_ARGS). */}}
{{- define "relay.upArgs" -}}
{{- $args := list }}
{{- with .Values.tailscale.loginServer }}
{{- $args = append $args (printf "--login-server=%s" .) }}
{{- end }}
{{- with .Values.tailscale.tags }}
{{- $args = append $args (printf "--advertise-tags=%s" (join "," .)) }}
{{- end }}
{{- $args = concat $args .Values.tailscale.extraArgs }}
{{- join " " $args }}
{{- end }}

{{/* Path of tailscaled's LocalAPI socket, in the /tmp volume the relay and its agent share. */}}
{{- define "relay.socket" -}}
/tmp/tailscaled.sock
{{- end }}


{{- /*
Credentials for the first login: an auth key, or an OAuth client that mints one.
The credential reaches the relay as a file, not an environment variable (containerboot reads
TS_AUTHKEY and TS_CLIENT_SECRET as "file:<path>"): a file in a Secret volume is not in the
process environment, which other processes of the same user, and crash dumps, can read.
*/ -}}
{{- define "relay.authMountPath" -}}/etc/tailscale/auth{{- end }}

{{/* The Secret holding the credential and the key in it, as a dict: name, key (auth key or OAuth client secret). */}}
{{- define "relay.authSecretRef" -}}
{{- $auth := .Values.auth }}
{{- if or $auth.authKey $auth.existingSecret }}
{{- dict "name" (default (include "relay.authSecretName" .) $auth.existingSecret) "key" (ternary $auth.existingSecretKey "TS_AUTHKEY" (not (empty $auth.existingSecret))) | toJson }}
{{- else }}
{{- dict "name" (default (include "relay.authSecretName" .) $auth.oauth.existingSecret) "key" (ternary $auth.oauth.clientSecretKey "TS_CLIENT_SECRET" (not (empty $auth.oauth.existingSecret))) | toJson }}
{{- end }}
{{- end }}

{{- define "relay.authEnv" -}}
{{- $auth := .Values.auth }}
{{- $ref := include "relay.authSecretRef" . | fromJson }}
{{- if or $auth.authKey $auth.existingSecret }}
- name: TS_AUTHKEY
  value: {{ printf "file:%s/%s" (include "relay.authMountPath" .) $ref.key | quote }}
{{- else }}
# The OAuth client's ID is not a secret; its secret is a file like the auth key.
- name: TS_CLIENT_ID
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ ternary $auth.oauth.clientIdKey "TS_CLIENT_ID" (not (empty $auth.oauth.existingSecret)) }}
- name: TS_CLIENT_SECRET
  value: {{ printf "file:%s/%s" (include "relay.authMountPath" .) $ref.key | quote }}
{{- end }}
{{- end }}

{{/* The relay container's read-only volume with just the credential file. */}}
{{- define "relay.authVolume" -}}
{{- $ref := include "relay.authSecretRef" . | fromJson }}
- name: auth
  secret:
    secretName: {{ $ref.name }}
    # group-readable: the relay runs with the pod's fsGroup (or as root in kernel mode)
    defaultMode: 288  # 0440
    items:
      - key: {{ $ref.key }}
        path: {{ $ref.key }}
{{- end }}

{{/*
The agent's environment, for relay-agent .command: "run" (the relay pod's agent container) or "check" (the hook Job
and the helm test Pod, relay.hookPodSpec). One list for both, so that what both read is written once: agent/main.go's
Env reads it, each field's env tag naming its variable and the commands that read it, and
tests/unit/test_agent_env.py holds the two to each other.
*/}}
{{- define "relay.agentEnv" -}}
{{- $root := .root }}
{{- if not (has .command (list "run" "check")) }}
{{- fail (printf "relay.agentEnv: command %q: want run or check" .command) }}
{{- end }}
{{- $run := eq .command "run" }}
{{- if $run }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: POD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
{{- end }}
- name: NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if $run }}
# replica N's Service has the pod's name (relay.replicaName)
- name: SERVICE_NAME
  value: $(POD_NAME)
- name: STATUS_CONFIGMAP
  value: {{ include "relay.statusConfigMapName" (dict "root" $root "index" "$(POD_INDEX)") }}
{{- else }}
- name: STATEFULSET
  value: {{ include "relay.fullname" $root | quote }}
- name: PODS
  value: {{ include "relay.replicaNames" (dict "root" $root "name" "relay.replicaName") | quote }}
- name: STATUS_CONFIGMAPS
  value: {{ include "relay.replicaNames" (dict "root" $root "name" "relay.statusConfigMapName") | quote }}
{{- end }}
- name: RELAY_PORT
  value: {{ $root.Values.relay.port | quote }}
- name: STATIC_ENDPOINTS
  value: {{ join "," $root.Values.relay.staticEndpoints | quote }}
{{- if $run }}
- name: TS_SOCKET
  value: {{ include "relay.socket" $root }}
- name: LOGIN_SERVER
  value: {{ include "relay.loginServer" $root | quote }}
- name: RESYNC_SECONDS
  value: {{ $root.Values.agent.resyncSeconds | quote }}
- name: RELOGIN_AFTER_SECONDS
  value: {{ $root.Values.agent.reloginAfterSeconds | quote }}
{{- with $root.Values.agent.loginServerCA }}
- name: LOGIN_SERVER_CA
  value: {{ . | quote }}
{{- end }}
- name: LISTEN_ADDRESS
  value: ":{{ $root.Values.agent.port }}"
{{- else }}
- name: TIMEOUT_SECONDS
  value: {{ $root.Values.hook.timeoutSeconds | quote }}
- name: IMAGE_PULL_GRACE_SECONDS
  value: {{ $root.Values.hook.imagePullGraceSeconds | quote }}
{{- end }}
{{- end }}

{{/*
Pod spec shared by the hook Job and the helm test Pod: the agent's check (relay-agent check), in mode .mode
("apply" or "verify"), as the hook ServiceAccount. It reads what each replica's agent reports in its status
ConfigMap: no logs, no exec.
*/}}
{{- define "relay.hookPodSpec" -}}
{{- $root := .root }}
serviceAccountName: {{ include "relay.hookName" $root }}
restartPolicy: Never
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: {{ .mode }}
    image: {{ include "relay.agentImage" $root }}
    imagePullPolicy: {{ $root.Values.agent.image.pullPolicy }}
    args: ["check", {{ .mode | quote }}]
    # On failure the end of the log (the check's message) becomes the pod's termination message (kubectl describe).
    terminationMessagePolicy: FallbackToLogsOnError
    env:
      {{- include "relay.agentEnv" (dict "root" $root "command" "check") | trim | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml $root.Values.hook.resources | nindent 6 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Name of a cluster-scoped admission policy and its binding (.policy: "state-secrets" or "replicas"):
unique per release and namespace.
*/}}
{{- define "relay.policyName" -}}
{{- printf "%s.%s.%s" (include "relay.fullname" .root) .root.Release.Namespace .policy | trunc 253 | trimSuffix "." }}
{{- end }}

{{/* The admission policies the values enable, by the names relay.policyName gives them. */}}
{{- define "relay.policyNames" -}}
{{- $names := list }}
{{- if .Values.rbac.relayRecreatesStateSecrets }}
{{- $names = append $names (include "relay.policyName" (dict "root" . "policy" "state-secrets")) }}
{{- end }}
{{- if .Values.rbac.refuseScalingOutsideHelm }}
{{- $names = append $names (include "relay.policyName" (dict "root" . "policy" "replicas")) }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The StatefulSet annotation that carries replicaCount for the replicas policy. */}}
{{- define "relay.replicasAnnotation" -}}
tailscale-peer-relay.chart/replica-count
{{- end }}

{{/* A list of strings as CEL string literals, comma-separated (names are DNS labels: no quoting issues). */}}
{{- define "relay.celStrings" -}}
{{- $quoted := list }}
{{- range . }}{{ $quoted = append $quoted (printf "'%s'" .) }}{{ end }}
{{- join ", " $quoted }}
{{- end }}

{{/* The control server the relay logs in to: the agent asks it whether it answers before it logs a relay out. */}}
{{- define "relay.loginServer" -}}
{{- default "https://controlplane.tailscale.com" .Values.tailscale.loginServer }}
{{- end }}

{{/*
A container securityContext as root (kernel networking: tailscale.userspace=false), otherwise locked down: no
privilege escalation, read-only root, every capability dropped except the list given (e.g. list "NET_ADMIN").
*/}}
{{- define "relay.rootSecurityContext" -}}
runAsUser: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  {{- with . }}
  add: {{ toJson . }}
  {{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
