{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "gemma-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name; the RayService carries it. KubeRay appends 6 characters for the
RayCluster and "-serve-svc" for the Service, so it allows at most 47 (a DNS-1035 label): a
longer name is cut there, as charts cut theirs at 63, so any release name Helm takes installs.
*/}}
{{- define "gemma-serve.fullname" -}}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- else }}
{{- $base := default .Chart.Name .Values.nameOverride }}
{{- if contains $base .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name $base }}
{{- end }}
{{- end }}
{{- $name = $name | trunc 47 | trimSuffix "-" }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "the full name %q must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter): set fullnameOverride" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "gemma-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gemma-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gemma-serve
{{- end }}

{{/*
Labels of the Ray pods. Not app.kubernetes.io/name: KubeRay sets it to "kuberay" on its pods,
and a label from the template would replace it.
*/}}
{{- define "gemma-serve.rayPodSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: gemma-serve
{{- end }}

{{- define "gemma-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gemma-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gemma-serve.redisName" -}}
{{- printf "%s-redis" (include "gemma-serve.fullname" .) }}
{{- end }}

{{- define "gemma-serve.keysSecretName" -}}
{{- if .Values.apiKeys.keysYaml }}
{{- printf "%s-keys" (include "gemma-serve.fullname" .) }}
{{- else }}
{{- .Values.apiKeys.existingSecret }}
{{- end }}
{{- end }}

{{- define "gemma-serve.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "gemma-serve.fullname" .)) .Values.modelCache.pvc.existingClaim }}
{{- end }}

{{/* Images: a tag (default: appVersion) or a digest; never "latest". -------------------- */}}

{{- define "gemma-serve.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag: name a release (default: the chart's appVersion), not \"latest\"" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Timing derived from the service settings --------------------------------------------- */}}

{{/* The longest pools[].drain_timeout_s (the settings' default: 600 s), whole seconds. */}}
{{- define "gemma-serve.poolDrainSeconds" -}}
{{- $pools := .Values.config.pools | default list }}
{{- $max := 0.0 }}
{{- if not $pools }}
{{- $max = 600.0 }}
{{- end }}
{{- range $pools }}
{{- $d := 600.0 }}
{{- if hasKey . "drain_timeout_s" }}
{{- $d = float64 .drain_timeout_s }}
{{- end }}
{{- $max = maxf $max $d }}
{{- end }}
{{- ceil $max | int }}
{{- end }}

{{/* RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S: the pools' drain plus a margin. */}}
{{- define "gemma-serve.nodeDrainSeconds" -}}
{{- add (include "gemma-serve.poolDrainSeconds" . | int) (.Values.shutdown.marginSeconds | int) }}
{{- end }}

{{/* terminationGracePeriodSeconds: the node drain plus a margin, then SIGKILL. */}}
{{- define "gemma-serve.gracePeriodSeconds" -}}
{{- add (include "gemma-serve.nodeDrainSeconds" . | int) (.Values.shutdown.marginSeconds | int) }}
{{- end }}

{{/* Serve's proxy deadline: the gateway's own (server.request_timeout_s, 600) + 30 s. */}}
{{- define "gemma-serve.proxyTimeoutSeconds" -}}
{{- $t := 600.0 }}
{{- with .Values.config.server }}
{{- if hasKey . "request_timeout_s" }}
{{- $t = float64 .request_timeout_s }}
{{- end }}
{{- end }}
{{- addf $t 30 }}
{{- end }}

{{/*
The application's args: the settings, with access.redis_url filled in with the chart's own
Redis when it runs one and the settings name none (its name follows the release).
*/}}
{{- define "gemma-serve.appArgs" -}}
{{- $args := deepCopy (.Values.config | default dict) }}
{{- if .Values.redis.enabled }}
{{- $access := $args.access | default dict }}
{{- if not $access.redis_url }}
{{- $_ := set $access "redis_url" (printf "redis://%s:6379/0" (include "gemma-serve.redisName" .)) }}
{{- $_ := set $args "access" $access }}
{{- end }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/* The RayService's serveConfigV2: one application whose args are the settings. */}}
{{- define "gemma-serve.serveConfig" -}}
{{- $http := dict "host" "0.0.0.0" "port" 8000 "request_timeout_s" (include "gemma-serve.proxyTimeoutSeconds" . | float64) }}
{{- $args := include "gemma-serve.appArgs" . | fromYaml }}
{{- $app := dict "name" "gemma-serve" "route_prefix" "/" "import_path" "service.app:from_args" "args" $args }}
{{- toYaml (dict "proxy_location" "EveryNode" "http_options" $http "applications" (list $app)) }}
{{- end }}

{{/* Security ---------------------------------------------------------------------------- */}}

{{- define "gemma-serve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser | int }}
runAsGroup: {{ .Values.podSecurity.runAsGroup | int }}
fsGroup: {{ .Values.podSecurity.fsGroup | int }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "gemma-serve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser | int }}
runAsGroup: {{ .Values.podSecurity.runAsGroup | int }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.podSecurity.readOnlyRootFilesystem }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The writable places of a container with a read-only image: /tmp (Ray's session files,
Python's and vLLM's temporary files) and HOME under it (vLLM's, Triton's and FlashInfer's
compile caches). Mount and environment, for every container the chart writes.
*/}}
{{- define "gemma-serve.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "gemma-serve.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "gemma-serve.tmpEnv" -}}
- name: HOME
  value: /tmp/home
{{- end }}

{{/*
The head's service-account token, mounted only into KubeRay's autoscaler sidecar (which scales
the worker groups through the Kubernetes API): the head pod sets automountServiceAccountToken
false, so the Ray processes and every replica on the head never see it.
*/}}
{{- define "gemma-serve.kubeApiAccessVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap:
          name: kube-root-ca.crt
          items: [{key: ca.crt, path: ca.crt}]
      - downwardAPI:
          items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]
{{- end }}

{{/* Ray pods ---------------------------------------------------------------------------- */}}

{{/* Environment of every Ray container. Call with (dict "root" $ "cache" bool). */}}
{{- define "gemma-serve.rayEnv" -}}
{{- $root := .root }}
- name: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
  value: {{ include "gemma-serve.nodeDrainSeconds" $root | quote }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
# config.server.ingress (docs/architecture.md): each node's Serve ingress, HAProxy by default.
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: {{ ternary "1" "0" (eq (dig "server" "ingress" "haproxy" $root.Values.config) "haproxy") | quote }}
{{ include "gemma-serve.tmpEnv" $root }}
{{- with $root.Values.redis.externalUrlSecret.name }}
# access.redis_url, from the Secret: the environment overrides the application's args.
- name: GEMMA_SERVE_ACCESS__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.redis.externalUrlSecret.key }}
{{- end }}
{{- if .cache }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $root.Values.modelCache.mountPath | quote }}
{{- if $root.Values.modelCache.prewarmed }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end }}
{{- with $root.Values.modelCache.hfTokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.modelCache.hfTokenSecret.key }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volume mounts of every Ray container. Call with (dict "root" $ "cache" bool). */}}
{{- define "gemma-serve.rayVolumeMounts" -}}
{{ include "gemma-serve.tmpMount" .root }}
{{- if include "gemma-serve.keysSecretName" .root }}
# The directory, not a subPath: the kubelet updates it in place when the Secret changes.
- name: api-keys
  mountPath: /etc/gemma-serve/keys
  readOnly: true
{{- end }}
{{- if .cache }}
- name: model-cache
  mountPath: {{ .root.Values.modelCache.mountPath }}
{{- end }}
{{- end }}

{{- define "gemma-serve.rayVolumes" -}}
{{- $root := .root }}
{{ include "gemma-serve.tmpVolume" $root }}
{{- with include "gemma-serve.keysSecretName" $root }}
- name: api-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if .cache }}
- name: model-cache
{{- if eq $root.Values.modelCache.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "gemma-serve.cacheClaimName" $root }}
{{- else if eq $root.Values.modelCache.type "hostPath" }}
  hostPath:
    path: {{ $root.Values.modelCache.hostPath.path }}
    type: {{ $root.Values.modelCache.hostPath.type }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
{{- end }}

{{/* Consistency between the settings and the chart, checked before anything renders. ---- */}}

{{- define "gemma-serve.validate" -}}
{{- $config := .Values.config | default dict }}
{{- $server := $config.server | default dict }}
{{- $access := $config.access | default dict }}
{{- if and (hasKey $server "port") (ne (int $server.port) 8000) }}
{{- fail (printf "config.server.port is %v; on Kubernetes Serve's proxy listens on 8000 (KubeRay's serve Service): remove it" $server.port) }}
{{- end }}
{{- if and .Values.apiKeys.keysYaml .Values.apiKeys.existingSecret }}
{{- fail "apiKeys: set either existingSecret or keysYaml, not both" }}
{{- end }}
{{- $keysFile := printf "/etc/gemma-serve/keys/%s" .Values.apiKeys.secretKey }}
{{- if $access.keys_file }}
{{- if not (include "gemma-serve.keysSecretName" .) }}
{{- fail (printf "config.access.keys_file is %s, but no keys Secret is mounted: set apiKeys.existingSecret or apiKeys.keysYaml" $access.keys_file) }}
{{- end }}
{{- if ne $access.keys_file $keysFile }}
{{- fail (printf "config.access.keys_file is %s, but the keys Secret is mounted at %s: use that path" $access.keys_file $keysFile) }}
{{- end }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" ($access.redis_url | default "") }}
{{- fail "config.access.redis_url holds a password, which would be stored in the RayService for anyone who may read it: put the URL in a Secret and set redis.externalUrlSecret.name" }}
{{- end }}
{{- if .Values.redis.externalUrlSecret.name }}
{{- if .Values.redis.enabled }}
{{- fail "redis.externalUrlSecret names your own Redis: set redis.enabled false (the chart's Redis needs no URL Secret)" }}
{{- end }}
{{- if $access.redis_url }}
{{- fail "config.access.redis_url and redis.externalUrlSecret both set the Redis URL: keep only the Secret" }}
{{- end }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- $redis := include "gemma-serve.redisName" . }}
{{- if and $access.redis_url (not (regexMatch (printf "^rediss?://([^@/]*@)?%s(\\.[a-z0-9.-]+)?(:6379)?(/[0-9]+)?$" $redis) $access.redis_url)) }}
{{- fail (printf "config.access.redis_url is %s, but the chart's Redis is redis://%s:6379/0 (release %q): leave it unset (the chart fills it in), or disable redis to keep your own" $access.redis_url $redis .Release.Name) }}
{{- end }}
{{- end }}
{{- if and .Values.modelCache.warmup.enabled (ne .Values.modelCache.type "pvc") }}
{{- fail (printf "modelCache.warmup fills a PersistentVolumeClaim; modelCache.type is %s: set it to pvc, or warm each node's %s yourself" .Values.modelCache.type .Values.modelCache.hostPath.path) }}
{{- end }}
{{- $groups := list }}
{{- range .Values.workerGroups }}
{{- if has .name $groups }}
{{- fail (printf "workerGroups: the name %q is repeated" .name) }}
{{- end }}
{{- $groups = append $groups .name }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "workerGroups[%s]: minReplicas (%v) exceeds maxReplicas (%v)" .name .minReplicas .maxReplicas) }}
{{- end }}
{{- $replicas := default .minReplicas .replicas }}
{{- if or (lt (int $replicas) (int .minReplicas)) (gt (int $replicas) (int .maxReplicas)) }}
{{- fail (printf "workerGroups[%s]: replicas (%v) must lie in [minReplicas, maxReplicas]" .name $replicas) }}
{{- end }}
{{- end }}
{{- end }}
