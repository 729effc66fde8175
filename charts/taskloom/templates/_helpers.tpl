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

{{/* image: call with (dict "image" .Values.image "root" $); an empty tag means the chart's appVersion,
     the version `make images` tags both images with (src/taskloom/images.py). */}}
{{- define "taskloom.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
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

{{/* The HMAC Secret's name: the chart never makes one up (no default credentials), so installing
     without it stops here with the command that creates it. */}}
{{- define "taskloom.hmacSecretName" -}}
{{- required (printf "events.hmacSecret.name is required: create the HMAC Secret with `kubectl -n %s create secret generic taskloom-webhook --from-literal=secret=$(openssl rand -hex 32)`, then add --set events.hmacSecret.name=taskloom-webhook" .Release.Namespace) .Values.events.hmacSecret.name -}}
{{- end -}}

{{/* The bearer token Secret shared by the gateway and the webhook EventSource: the user's, or the one
     the chart generates (gateway.yaml). */}}
{{- define "taskloom.eventsTokenSecretName" -}}
{{- .Values.events.webhook.authSecret.name | default (printf "%s-events-token" (include "taskloom.fullname" .)) -}}
{{- end -}}

{{/* The events gateway: the monitor posts its signed alarms here, never to the webhook itself. */}}
{{- define "taskloom.gatewayUrl" -}}
{{- printf "http://%s-gateway.%s.svc:%d%s" (include "taskloom.fullname" .) .Release.Namespace (int .Values.events.gateway.port) .Values.events.webhook.endpoint -}}
{{- end -}}

{{/* A random value for a generated Secret, kept across upgrades: the live Secret's, when there is one.
     Call with (dict "root" $ "name" NAME "key" KEY); prints the base64 value. */}}
{{- define "taskloom.stableRandom" -}}
{{- $old := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $old $old.data (hasKey $old.data .key) -}}
{{- index $old.data .key -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/*
Whether the Triton model logs request text: "auto" is on exactly when the drift monitor runs an embedding
detector (everything but chi2 and bbsd, which test the head's logged answers, embeds the texts), so enabling
the monitor is the opt-in; false with such a monitor would leave every window untestable and stops the install.
*/}}
{{- define "taskloom.requestLogText" -}}
{{- $l := .Values.triton.requestLog -}}
{{- $embeds := and .Values.monitor.enabled (not (has .Values.monitor.config.method (list "chi2" "bbsd"))) -}}
{{- if eq (toString $l.includeText) "auto" -}}
{{- ternary "true" "false" $embeds -}}
{{- else if and $embeds (not $l.includeText) -}}
{{- fail (printf "triton.requestLog.includeText=false leaves the monitor's %s detector no text to embed: use monitor.config.method=chi2 or bbsd (test the served head's logged answers) or includeText=auto" .Values.monitor.config.method) -}}
{{- else -}}
{{- toString $l.includeText -}}
{{- end -}}
{{- end -}}
