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
