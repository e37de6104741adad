{{/*
Labels of every object: the selector labels of its component (the same
as deploy/kubernetes) plus two that say Helm manages it. Pod templates and
selectors get only the selector labels, so a chart upgrade alone does not
restart the node plugins.
*/}}
{{- define "csi-qcow2.selectorLabels" -}}
app.kubernetes.io/name: csi-qcow2
{{- with . }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "csi-qcow2.labels" -}}
{{ include "csi-qcow2.selectorLabels" .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* The plugin's socket directory on the host. */}}
{{- define "csi-qcow2.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/csi-qcow2.io
{{- end }}

{{/* Container args: the fixed ones, then the user's extra ones. */}}
{{- define "csi-qcow2.args" -}}
{{- range .args }}
- {{ . | quote }}
{{- end }}
{{- range .extra }}
- {{ . | quote }}
{{- end }}
{{- end }}
