{{/* Names and labels shared by every object. */}}

{{- define "taskloom.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskloom.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taskloom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "taskloom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: taskloom
{{- end -}}

{{/* selectorLabels: call with (dict "root" $ "component" "triton") */}}
{{- define "taskloom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskloom.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "taskloom.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "taskloom.eventSourceName" -}}
{{- printf "%s-drift" (include "taskloom.fullname" .) -}}
{{- end -}}

{{/* The Service Argo Events creates for the webhook EventSource. */}}
{{- define "taskloom.eventsUrl" -}}
{{- printf "http://%s-eventsource-svc.%s.svc:%d%s" (include "taskloom.eventSourceName" .) .Release.Namespace (int .Values.events.webhook.port) .Values.events.webhook.endpoint -}}
{{- end -}}

{{- define "taskloom.sharedVolume" -}}
- name: shared
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.claimName }}
{{- end -}}
