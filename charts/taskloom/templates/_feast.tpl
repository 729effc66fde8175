{{/* Feast's cluster configuration (taskloom.store.backends): with feast.registry.type=sql the registry and
     the history live in PostgreSQL and the online store in Redis, their URLs in Secrets the chart only
     references. Pods that read or write features include feastEnv, feastVolumeMounts and feastVolumes:
     the Secrets are mounted as files and named by TASKLOOM_FEAST_*_URL_FILE, never copied into the spec. */}}

{{- define "taskloom.feastCluster" -}}
{{- $f := .Values.feast -}}
{{- if eq $f.registry.type "sql" -}}
{{- if ne $f.onlineStore.type "redis" -}}
{{- fail "feast.registry.type=sql goes with feast.onlineStore.type=redis (the SQLite online store is a file on one volume)" -}}
{{- end -}}
true
{{- else if ne $f.onlineStore.type "sqlite" -}}
{{- fail "feast.onlineStore.type=redis goes with feast.registry.type=sql (the file registry is a file on one volume)" -}}
{{- end -}}
{{- end -}}

{{- define "taskloom.feastSecretsPath" -}}/etc/taskloom-feast{{- end -}}

{{- define "taskloom.feastEnv" -}}
{{- if include "taskloom.feastCluster" . -}}
- name: TASKLOOM_FEAST_POSTGRES_URL_FILE
  value: {{ include "taskloom.feastSecretsPath" . }}/postgres-url
- name: TASKLOOM_FEAST_REDIS_URL_FILE
  value: {{ include "taskloom.feastSecretsPath" . }}/redis-url
{{- end }}
{{- end -}}

{{- define "taskloom.feastVolumeMounts" -}}
{{- if include "taskloom.feastCluster" . -}}
- name: feast-connections
  mountPath: {{ include "taskloom.feastSecretsPath" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "taskloom.feastVolumes" -}}
{{- if include "taskloom.feastCluster" . -}}
{{- $r := .Values.feast.registry.secret -}}
{{- $o := .Values.feast.onlineStore.secret -}}
- name: feast-connections
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ required (printf "feast.registry.secret.name is required with feast.registry.type=sql: `kubectl -n %s create secret generic taskloom-feast --from-literal=postgres-url='postgresql://USER:PASSWORD@HOST:5432/DATABASE?sslmode=require' --from-literal=redis-url='redis://:PASSWORD@HOST:6379/0'`" .Release.Namespace) $r.name }}
          items:
            - key: {{ $r.key }}
              path: postgres-url
      - secret:
          name: {{ required "feast.onlineStore.secret.name is required with feast.onlineStore.type=redis (the Secret holding the Redis URL; it may be the registry's)" $o.name }}
          items:
            - key: {{ $o.key }}
              path: redis-url
{{- end }}
{{- end -}}
