{{/* The chart's name, and the prefix of every object's name (at most 63 characters, as DNS labels). */}}
{{- define "esi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's objects: "<fullname>-<component>". Call with (dict "root" $ "component" "api"). */}}
{{- define "esi.componentName" -}}
{{- printf "%s-%s" (include "esi.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "esi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "esi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "esi.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: esi
{{- end -}}

{{- define "esi.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "esi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "esi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An adapter's KEDA settings: its own keda map over the chart's keda map. Call with (dict "root" $ "adapter" $a). */}}
{{- define "esi.kedaFor" -}}
{{- toYaml (merge (deepCopy (default dict .adapter.keda)) (deepCopy .root.Values.keda)) -}}
{{- end -}}

{{- define "esi.queueFor" -}}
{{- default (printf "%s_queue" .code) .adapter.queue -}}
{{- end -}}

{{/* The database URL is in plain values only for SQLite and other password-less URLs. */}}
{{- define "esi.sqlite" -}}
{{- if hasPrefix "sqlite" (toString .Values.database.url) -}}true{{- end -}}
{{- end -}}

{{/*
What the chart refuses to render: SQLite shared by nothing (each pod its own file) with more than one replica or
with KEDA; a password in plain values; a broker or database without a Secret to read it from.
*/}}
{{- define "esi.validate" -}}
{{- $url := toString .Values.database.url -}}
{{- if regexMatch "^[a-zA-Z0-9+.-]+://[^/@]*:[^/@]*@" $url -}}
{{- fail "database.url holds a password: put the URL in existingSecret under secretKeys.databaseUrl and leave database.url empty" -}}
{{- end -}}
{{- if include "esi.sqlite" . -}}
{{- if and .Values.api.enabled (gt (int .Values.api.replicas) 1) -}}
{{- fail (printf "database.url is SQLite (%s) with api.replicas=%v: each pod would have a database of its own; use PostgreSQL (secretKeys.databaseUrl) for more than one replica" $url .Values.api.replicas) -}}
{{- end -}}
{{- range $code, $a := .Values.adapters -}}
{{- if $a.enabled -}}
{{- $keda := fromYaml (include "esi.kedaFor" (dict "root" $ "adapter" $a)) -}}
{{- if $keda.enabled -}}
{{- fail (printf "database.url is SQLite (%s) and KEDA scales adapters.%s: use PostgreSQL (secretKeys.databaseUrl) for more than one replica" $url $code) -}}
{{- end -}}
{{- if gt (int (dig "replicas" 1 $a)) 1 -}}
{{- fail (printf "database.url is SQLite (%s) with adapters.%s.replicas=%v: use PostgreSQL (secretKeys.databaseUrl) for more than one replica" $url $code $a.replicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.existingSecret) (or (not $url) (not .Values.rabbitmq.host)) -}}
{{- fail "existingSecret is empty: name the Secret holding the AMQP URL and the database URL (docs/kubernetes.md)" -}}
{{- end -}}
{{- if and .Values.rabbitmq.host (not .Values.rabbitmq.credentialsSecret.name) -}}
{{- fail "rabbitmq.host is set without rabbitmq.credentialsSecret.name: the Secret holding the broker's user and password" -}}
{{- end -}}
{{- end -}}

{{/* A map NAME: key | {secret, key, optional} as env entries from Secrets. Call with (dict "root" $ "env" $map). */}}
{{- define "esi.secretEnv" -}}
{{- $root := .root -}}
{{- range $name, $ref := .env }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
{{- if kindIs "map" $ref }}
      name: {{ default $root.Values.existingSecret $ref.secret }}
      key: {{ required (printf "secretEnv %s: key is required" $name) $ref.key }}
{{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
{{- end }}
{{- else }}
      name: {{ $root.Values.existingSecret }}
      key: {{ $ref }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A map NAME: value as plain env entries. */}}
{{- define "esi.plainEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/* The settings every esi pod has: the broker, the store, logs. */}}
{{- define "esi.commonEnv" -}}
- name: ESI_ENV
  value: {{ .Values.esi.env | quote }}
- name: ESI_LOG_LEVEL
  value: {{ .Values.esi.logLevel | quote }}
- name: ESI_LOG_FORMAT
  value: {{ .Values.esi.logFormat | quote }}
- name: ESI_PREFETCH
  value: {{ .Values.esi.prefetch | quote }}
{{- if .Values.rabbitmq.host }}
- name: RABBITMQ_HOST
  value: {{ .Values.rabbitmq.host | quote }}
- name: RABBITMQ_PORT
  value: {{ .Values.rabbitmq.port | quote }}
- name: RABBITMQ_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.credentialsSecret.name }}
      key: {{ .Values.rabbitmq.credentialsSecret.usernameKey }}
- name: RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.rabbitmq.credentialsSecret.name }}
      key: {{ .Values.rabbitmq.credentialsSecret.passwordKey }}
{{- else }}
- name: ESI_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ required "secretKeys.amqpUrl is required without rabbitmq.host" .Values.secretKeys.amqpUrl }}
{{- end }}
{{- if .Values.database.url }}
- name: ESI_DATABASE_URL
  value: {{ .Values.database.url | quote }}
{{- else }}
- name: ESI_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ required "secretKeys.databaseUrl is required without database.url" .Values.secretKeys.databaseUrl }}
{{- end }}
{{- include "esi.plainEnv" .Values.esi.extraEnv }}
{{- end -}}

{{/*
The pod template of one service. Call with (dict "root" $ "component" "api" "args" (list "run" "onec")
"port" 5000 "portName" "http" "env" (list of env entries as YAML) "resources" {...}).
*/}}
{{- define "esi.podTemplate" -}}
{{- $root := .root -}}
{{- $sel := dict "root" $root "component" .component -}}
metadata:
  labels:
    {{- include "esi.labels" $sel | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $root.Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "esi.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # the preStop sleep, then esi finishing its in-flight work on SIGTERM
  terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- if $root.Values.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ $root.Values.topologySpread.zoneWhenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "esi.selectorLabels" $sel | nindent 10 }}
      matchLabelKeys: [pod-template-hash]
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: {{ $root.Values.topologySpread.nodeWhenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "esi.selectorLabels" $sel | nindent 10 }}
      matchLabelKeys: [pod-template-hash]
  {{- end }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "esi.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      ports:
        - name: {{ .portName }}
          containerPort: {{ .port }}
          protocol: TCP
      env:
        {{- include "esi.commonEnv" $root | nindent 8 }}
        {{- .env | nindent 8 }}
      startupProbe:
        httpGet:
          path: /livez
          port: {{ .portName }}
        periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
        timeoutSeconds: 5
        failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /livez
          port: {{ .portName }}
        periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ .portName }}
        periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $root.Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $root.Values.probes.readiness.failureThreshold }}
      lifecycle:
        preStop:
          # the endpoints controller and the proxies drop the pod meanwhile; then SIGTERM (esi finishes in-flight work)
          exec:
            command: ["sleep", {{ $root.Values.preStopSleepSeconds | quote }}]
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if include "esi.sqlite" $root }}
        - name: var
          mountPath: /app/var
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.tmpSizeLimit }}
    {{- if include "esi.sqlite" $root }}
    # SQLite (a one-replica trial): the pod's own database, gone with the pod
    - name: var
      emptyDir: {}
    {{- end }}
{{- end -}}
