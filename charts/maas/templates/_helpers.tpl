{{/*
Names. Kubernetes names of Services and labels must stay within 63 characters: the release prefix is
cut to 63, a component's name to 52 so that suffixes such as "-headless" still fit.
*/}}
{{- define "maas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "maas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "maas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The components: Kubernetes name => key in values. Templates range over this (sorted by name).
*/}}
{{- define "maas.components" -}}
{{- dict "orchestrator" "orchestrator" "tokenizer" "tokenizer" "model-runner" "modelRunner" | toJson }}
{{- end }}

{{/*
Helpers below that take "a component context" expect: dict "root" $ "name" "model-runner" "c" .Values.modelRunner
*/}}

{{/*
<fullname>-<component>, e.g. maas-model-runner, at most 52 characters. The prefix is what gets cut,
so two components never end up with one name. Argument: a component context.
*/}}
{{- define "maas.componentFullname" -}}
{{- $prefix := include "maas.fullname" .root | trunc (int (sub 51 (len .name))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .name }}
{{- end }}

{{/* <fullname>-<suffix> within 63 characters, the prefix cut. Argument: list $ "suffix". */}}
{{- define "maas.suffixedName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $prefix := include "maas.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $suffix }}
{{- end }}

{{- define "maas.headlessName" -}}
{{- printf "%s-headless" (include "maas.componentFullname" .) }}
{{- end }}

{{/* Labels shared by every object of the release. Argument: the root context. */}}
{{- define "maas.commonLabels" -}}
helm.sh/chart: {{ include "maas.chart" . }}
app.kubernetes.io/name: {{ include "maas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: maas
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects. Argument: a component context. */}}
{{- define "maas.labels" -}}
{{ include "maas.commonLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* What a component's Deployment, Services, PDB and policies select on. Argument: a component context. */}}
{{- define "maas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "maas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A component's image: [registry/]repository:tag[@digest]; the GPU runner gets the -gpu tag. */}}
{{- define "maas.image" -}}
{{- $root := .root }}
{{- $image := .c.image }}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag }}
{{- if and (eq .name "model-runner") .c.gpu.enabled (not $image.tag) }}
{{- $tag = printf "%s%s" $tag .c.gpu.imageTagSuffix }}
{{- end }}
{{- $repository := $image.repository }}
{{- with $root.Values.image.registry }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s:%s@%s" $repository $tag $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* The orchestrator's target for a downstream component: dns:/// of its headless Service (round_robin over pods). */}}
{{- define "maas.downstreamAddress" -}}
{{- $root := .root }}
{{- $c := index $root.Values .key }}
{{- if .override }}
{{- .override }}
{{- else if $c.enabled }}
{{- $ctx := dict "root" $root "name" .name "c" $c }}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "maas.headlessName" $ctx) $root.Release.Namespace $root.Values.clusterDomain (int $c.grpcPort) }}
{{- else }}
{{- fail (printf "orchestrator.%sAddress is required when %s.enabled is false" .field .key) }}
{{- end }}
{{- end }}

{{- define "maas.apiKeysSecretName" -}}
{{- default (include "maas.suffixedName" (list . "api-keys")) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "maas.modelsClaimName" -}}
{{- if eq .Values.modelRepository.source "existingClaim" }}
{{- required "modelRepository.existingClaim is required when modelRepository.source is existingClaim" .Values.modelRepository.existingClaim }}
{{- else }}
{{- include "maas.suffixedName" (list . "models") }}
{{- end }}
{{- end }}

{{/* MODEL_REPOSITORY inside the containers. */}}
{{- define "maas.modelRepositoryPath" -}}
{{- if eq .Values.modelRepository.source "builtin" }}
{{- "/app/services/models/repository" }}
{{- else }}
{{- .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}
