{{/* Common names and labels. */}}
{{- define "hsmd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hsmd.labels" -}}
app.kubernetes.io/name: hsmd
app.kubernetes.io/part-of: hsm-secrets-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "hsmd.selector" -}}
app.kubernetes.io/name: hsmd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
