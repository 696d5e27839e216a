{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "sftrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource-name prefix: fullnameOverride, else "<release>" or "<release>-<name>". */}}
{{- define "sftrl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "sftrl.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "sftrl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sftrl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sftrl
{{- end }}

{{/* Selector labels of the operator pod. */}}
{{- define "sftrl.operatorSelector" -}}
app.kubernetes.io/name: {{ include "sftrl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector labels of the Pushgateway pod. */}}
{{- define "sftrl.pushgatewaySelector" -}}
app.kubernetes.io/name: {{ include "sftrl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: pushgateway
{{- end }}

{{/* The label kube-prometheus-stack selects monitors and rules by. */}}
{{- define "sftrl.monitoringLabels" -}}
release: {{ .Values.monitoring.release | quote }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "sftrl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sftrl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false, because the operator must run as an existing ServiceAccount. Set serviceAccount.name or serviceAccount.create=true." .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The training pods' ServiceAccount name ("" for the namespace default). */}}
{{- define "sftrl.runtimeServiceAccountName" -}}
{{- if .Values.runtime.serviceAccount.create }}
{{- default (printf "%s-runtime" (include "sftrl.fullname" .)) .Values.runtime.serviceAccount.name }}
{{- else }}
{{- .Values.runtime.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "sftrl.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* The in-cluster URL of the Pushgateway. */}}
{{- define "sftrl.pushgatewayURL" -}}
{{- printf "http://%s-pushgateway.%s.svc:%d" (include "sftrl.fullname" .) .Release.Namespace (int .Values.pushgateway.port) }}
{{- end }}

{{/*
Security context of every container the chart runs: non-root, read-only root filesystem,
no privilege escalation, no capabilities, the runtime's default seccomp profile.
*/}}
{{- define "sftrl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod security context; the argument is the UID to run as. */}}
{{- define "sftrl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}
