{{/* Name of every object; part of the filter's Envoy cluster name, so not derived from the release. */}}
{{- define "surge.fullname" -}}
{{- .Values.fullnameOverride | default "surge-scaler" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "surge.labels" -}}
app.kubernetes.io/name: surge-scaler
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: scaler
app.kubernetes.io/part-of: surge
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "surge.selectorLabels" -}}
app.kubernetes.io/name: surge-scaler
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "surge.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "surge.tokenSecretName" -}}
{{- .Values.token.existingSecret | default (printf "%s-token" (include "surge.fullname" .)) -}}
{{- end -}}

{{/* The Envoy cluster name the filter must use to reach this release's ingest port. */}}
{{- define "surge.envoyCluster" -}}
outbound|{{ .Values.scaler.ingestPort }}||{{ include "surge.fullname" . }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{/*
The RBAC rules of the scaler: exactly the API calls it makes (templates/rbac.yaml binds them).
*/}}
{{- define "surge.rbacRules" }}
rules:
  # kube-runtime's watcher: a list, then a watch from its resourceVersion. Never a get.
  - apiGroups: ["surge.dev"]
    resources: ["surgescalers"]
    verbs: ["list", "watch"]
  # Status is written with merge patches only.
  - apiGroups: ["surge.dev"]
    resources: ["surgescalers/status"]
    verbs: ["patch"]
  # Only the scale subresource, never the workloads themselves.
  - apiGroups: ["apps"]
    resources: ["deployments/scale", "statefulsets/scale"]
    verbs: ["get", "patch"]
  # Listed in the target's namespace to refuse a target another autoscaler drives.
  - apiGroups: ["autoscaling"]
    resources: ["horizontalpodautoscalers"]
    verbs: ["list"]
  # Needed also without KEDA: the API server authorizes before it routes, so a denied list is a
  # 403 (the target stays refused) where an allowed one is a 404 (KEDA absent: no conflict).
  - apiGroups: ["keda.sh"]
    resources: ["scaledobjects"]
    verbs: ["list"]
  # kube-runtime's Recorder: create, then patch the same Event when it repeats (a series).
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  # Scale to zero: the ports of a SurgeScaler's scaleToZero.service when it names none; ambient
  # mode: the istio.io/use-waypoint label of its sources.waypoint.service (read by name; never
  # listed or watched).
  - apiGroups: [""]
    resources: ["services"]
    verbs: ["get"]
  {{- if not .Values.scaler.watchNamespaces }}
  # Ambient mode: the istio.io/use-waypoint label of a waypoint-fed target's namespace, when its
  # Service has none (read by name). Cluster-scoped, so only cluster-wide: with watchNamespaces
  # only the Service's own label binds it to a waypoint.
  - apiGroups: [""]
    resources: ["namespaces"]
    verbs: ["get"]
  {{- end }}
  # Scale to zero: the Service's ready endpoints, by the label kubernetes.io/service-name
  # (kube-runtime's watcher: a list, then a watch).
  - apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices"]
    verbs: ["list", "watch"]
  # Headroom: the CapacityBuffer <surgescaler>-headroom, written with server-side apply, which
  # the API server authorizes as create too when the buffer does not exist yet. Nothing else of
  # the cluster autoscaler's is touched.
  - apiGroups: ["autoscaling.x-k8s.io"]
    resources: ["capacitybuffers"]
    verbs: ["create", "patch"]
{{- end }}
