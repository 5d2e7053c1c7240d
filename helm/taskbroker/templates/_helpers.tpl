{{- define "taskbroker.name" -}}{{ .Release.Name }}-taskbroker{{- end -}}
{{- define "taskbroker.labels" -}}
app.kubernetes.io/name: taskbroker
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
