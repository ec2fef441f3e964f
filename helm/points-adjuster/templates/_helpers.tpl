{{/*
Names. The full name is cut to 52 characters: a StatefulSet's pods carry the label
controller-revision-hash "<name>-<hash>", which must stay within 63.
*/}}
{{- define "points-adjuster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "points-adjuster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "points-adjuster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "points-adjuster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "points-adjuster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "points-adjuster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: points-adjuster
{{- end -}}

{{- define "points-adjuster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "points-adjuster.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "points-adjuster.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
A setting as the service reads it from its environment: lists as JSON, whole numbers without
a decimal point or an exponent (values files give every number as a float: 67108864 would
otherwise read 6.7108864e+07).
*/}}
{{- define "points-adjuster.settingValue" -}}
{{- if kindIs "slice" . -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
A number of seconds from a setting of the `settings` map, or the service's default.
Arguments: (list $ "PA_NAME" default).
*/}}
{{- define "points-adjuster.secondsSetting" -}}
{{- $root := index . 0 -}}
{{- $value := index $root.Values.settings (index . 1) -}}
{{- if kindIs "invalid" $value -}}
{{- index . 2 -}}
{{- else -}}
{{- float64 $value -}}
{{- end -}}
{{- end -}}

{{/*
The broker-gone margin of the drain (docs/operations.md): after PA_SHUTDOWN_TIMEOUT_S the
final commit and stopping the Kafka clients take at most 9 s more, and a commit already under
way when the signal came 3 s more.
*/}}
{{- define "points-adjuster.drainMarginSeconds" -}}12{{- end -}}

{{/*
terminationGracePeriodSeconds: the drain budget rounded up, plus the broker-gone margin, plus
slack, so the kubelet's SIGKILL never cuts a drain that the service itself would end in time.
*/}}
{{- define "points-adjuster.terminationGracePeriodSeconds" -}}
{{- $drain := include "points-adjuster.secondsSetting" (list . "PA_SHUTDOWN_TIMEOUT_S" 20.0) | float64 | ceil -}}
{{- $margin := include "points-adjuster.drainMarginSeconds" . | int -}}
{{- add (int $drain) $margin (int .Values.terminationGrace.slackSeconds) -}}
{{- end -}}

{{/*
The startupProbe's failureThreshold: its window covers four Kafka client start-ups (the
continuity check's admin client, the producer, the topic limits' admin client, the consumer)
of PA_KAFKA__STARTUP_TIMEOUT_S each, plus 30 s for the credentials, the store and the topic
check. A broker that stays unreachable ends the process with exit code 2 before that.
*/}}
{{- define "points-adjuster.startupFailureThreshold" -}}
{{- $startup := include "points-adjuster.secondsSetting" (list . "PA_KAFKA__STARTUP_TIMEOUT_S" 20.0) | float64 -}}
{{- $window := addf (mulf 4 $startup) 30 -}}
{{- divf $window .Values.probes.startup.periodSeconds | ceil | int -}}
{{- end -}}

{{/* Where the credential files are mounted (one projected volume, read-only). */}}
{{- define "points-adjuster.credentialsDir" -}}/var/run/secrets/points-adjuster{{- end -}}

{{/*
The credential files: value name, file name in the mount, the setting that points at it, and
whether it is always mounted (the service cannot start without it).
*/}}
{{- define "points-adjuster.credentialFiles" -}}
- {value: consumerKey, file: consumer-key, setting: PA_PAS__CONSUMER_KEY_FILE, required: true}
- {value: signingKey, file: signing-key, setting: PA_PAS__SIGNING_KEY_PATH, required: true}
- {value: signingKeyPassword, file: signing-key-password, setting: PA_PAS__SIGNING_KEY_PASSWORD_FILE, required: false}
- {value: decryptionKey, file: decryption-key, setting: PA_PAS__DECRYPTION_KEY_PATH, required: true}
- {value: decryptionKeyPassword, file: decryption-key-password, setting: PA_PAS__DECRYPTION_KEY_PASSWORD_FILE, required: false}
- {value: encryptionCertificate, file: encryption-certificate, setting: PA_PAS__ENCRYPTION_CERTIFICATE_PATH, required: true}
- {value: decryptionCertificate, file: decryption-certificate, setting: PA_PAS__DECRYPTION_CERTIFICATE_PATH, required: false}
{{- end -}}

{{/*
The credential files this release mounts, as a list of the entries above, then the shared
store's password (idempotency.passwordSecret) when the store is PostgreSQL or Redis and the
values name a Secret, then the files of Kafka's security, PAS's TLS and the schema registry
whose Secrets the values name (_security.tpl): one mechanism, one read-only volume for every
secret file.
*/}}
{{- define "points-adjuster.mountedCredentials" -}}
{{- $mounted := list -}}
{{- range (include "points-adjuster.credentialFiles" . | fromYamlArray) -}}
{{- $entry := index $.Values.credentials .value -}}
{{- if or .required $entry.enabled -}}
{{- $secret := default $.Values.credentials.existingSecret $entry.secretName -}}
{{- $mounted = append $mounted (dict "file" .file "setting" .setting "secret" $secret "key" $entry.key) -}}
{{- end -}}
{{- end -}}
{{- $password := .Values.idempotency.passwordSecret -}}
{{- if and (include "points-adjuster.sharedStore" .) $password.name -}}
{{- $mounted = append $mounted (dict "file" "idempotency-password" "setting" "PA_IDEMPOTENCY__PASSWORD_FILE" "secret" $password.name "key" $password.key) -}}
{{- end -}}
{{- $mounted = concat $mounted (include "points-adjuster.mountedSecurityFiles" . | fromYamlArray) -}}
{{- toYaml $mounted -}}
{{- end -}}

{{/* "true" when the idempotency store is shared by the replicas (PostgreSQL, Redis), else "". */}}
{{- define "points-adjuster.sharedStore" -}}
{{- if has .Values.idempotency.backend (list "postgresql" "redis") -}}true{{- end -}}
{{- end -}}

{{/*
The DSN schemes of each shared store (the service's own list: service/settings.py
STORE_SCHEMES) and the port its clients use when the DSN names none.
*/}}
{{- define "points-adjuster.storeSchemes" -}}
postgresql: {schemes: [postgresql, postgres], port: 5432, example: "postgresql://<user>@<host>:5432/<database>"}
redis: {schemes: [redis, rediss], port: 6379, example: "redis://<host>:6379/<db> (rediss:// for TLS)"}
{{- end -}}

{{/*
idempotency.dsn taken apart: scheme (lower case), userinfo (before the last "@" of the
authority), hosts (what follows it: host[:port], comma-separated for several PostgreSQL hosts)
and query. Nothing here is ever printed whole: a refused DSN may carry a password.
*/}}
{{- define "points-adjuster.storeDsn" -}}
{{- $dsn := .Values.idempotency.dsn -}}
{{- $scheme := "" -}}
{{- $rest := $dsn -}}
{{- if contains "://" $dsn -}}
{{- $parts := splitn "://" 2 $dsn -}}
{{- $scheme = lower $parts._0 -}}
{{- $rest = $parts._1 -}}
{{- end -}}
{{- $authority := regexFind "^[^/?#]*" $rest -}}
{{- $userinfo := "" -}}
{{- $hosts := $authority -}}
{{- if contains "@" $authority -}}
{{- $userinfo = regexReplaceAll "@[^@]*$" $authority "" -}}
{{- $hosts = regexReplaceAll "^.*@" $authority "" -}}
{{- end -}}
{{- toYaml (dict "scheme" $scheme "userinfo" $userinfo "hosts" $hosts "query" (regexFind "[?][^#]*" $rest)) -}}
{{- end -}}

{{/*
The TCP ports of the shared store the NetworkPolicy opens: networkPolicy.store.ports, or,
when that is empty, each port the DSN names (the store's default port for a host without one).
*/}}
{{- define "points-adjuster.storePorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.store.ports -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- if not $ports -}}
{{- $default := (get (include "points-adjuster.storeSchemes" . | fromYaml) .Values.idempotency.backend).port | int -}}
{{- $dsn := include "points-adjuster.storeDsn" . | fromYaml -}}
{{- range splitList "," $dsn.hosts -}}
{{- $port := trimPrefix ":" (regexFind ":[0-9]+$" .) -}}
{{- $ports = append $ports (ternary $default (int $port) (eq $port "")) -}}
{{- end -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{/* The SQLite database file on the store's volume. */}}
{{- define "points-adjuster.sqlitePath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.idempotency.sqlite.mountPath) .Values.idempotency.sqlite.fileName -}}
{{- end -}}

{{/*
The settings the chart computes itself (from structured values), beside the `settings` map.
The group instance id is not here: it comes from the pod's name (the downward API).
*/}}
{{- define "points-adjuster.computedSettings" -}}
PA_WORKERS: {{ .Values.workers | int | quote }}
PA_METRICS__ENABLED: "true"
PA_METRICS__HOST: {{ .Values.metrics.host | quote }}
PA_METRICS__PORT: {{ .Values.metrics.port | int | quote }}
{{- if include "points-adjuster.sharedStore" . }}
{{- /* The DSN's scheme names the store; PA_IDEMPOTENCY__BACKEND only chooses without one. */}}
PA_IDEMPOTENCY__DSN: {{ .Values.idempotency.dsn | quote }}
{{- else }}
PA_IDEMPOTENCY__BACKEND: {{ .Values.idempotency.backend | quote }}
PA_IDEMPOTENCY__SQLITE_PATH: {{ include "points-adjuster.sqlitePath" . | quote }}
{{- end }}
{{- include "points-adjuster.securitySettings" . | nindent 0 }}
{{- range (include "points-adjuster.mountedCredentials" . | fromYamlArray) }}
{{ .setting }}: {{ printf "%s/%s" (include "points-adjuster.credentialsDir" $) .file | quote }}
{{- end }}
{{- end -}}

{{/*
Refusals with their reasons, included by the StatefulSet (so by every install and template).
*/}}
{{- define "points-adjuster.validate" -}}
{{- if and (eq .Values.idempotency.backend "sqlite") (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount: %d is refused with idempotency.backend sqlite: each replica keeps its own SQLite store on its own volume, so a partition moving to another replica in a rebalance would meet a store that knows none of its claims, and a re-delivered command would be applied twice. Run one replica on SQLite, or several on a store they share: idempotency.backend postgresql (recommended) or redis, with idempotency.dsn (docs/helm.md, Several replicas on a shared store)." (int .Values.replicaCount)) -}}
{{- end -}}
{{- include "points-adjuster.validateStore" . -}}
{{- include "points-adjuster.validateSecurity" . -}}
{{- $secrets := list "PA_PAS__CONSUMER_KEY" "PA_PAS__SIGNING_KEY_PASSWORD" "PA_PAS__DECRYPTION_KEY_PASSWORD" -}}
{{- $computed := dict
    "PA_KAFKA__GROUP_INSTANCE_ID" "the pod's name"
    "PA_METRICS__ENABLED" "the probes (always true)"
    "PA_METRICS__HOST" "metrics.host"
    "PA_METRICS__PORT" "metrics.port"
    "PA_WORKERS" "workers"
    "PA_IDEMPOTENCY__BACKEND" "idempotency.backend"
    "PA_IDEMPOTENCY__SQLITE_PATH" "idempotency.sqlite.mountPath and fileName"
    "PA_IDEMPOTENCY__DSN" "idempotency.dsn"
    "PA_IDEMPOTENCY__PASSWORD_FILE" "idempotency.passwordSecret"
-}}
{{- range (include "points-adjuster.credentialFiles" . | fromYamlArray) -}}
{{- $_ := set $computed .setting (printf "credentials.%s" .value) -}}
{{- end -}}
{{- range $name, $value := (include "points-adjuster.securityComputed" . | fromYaml) -}}
{{- $_ := set $computed $name $value -}}
{{- end -}}
{{- range $name, $_ := .Values.settings -}}
{{- if has $name $secrets -}}
{{- fail (printf "settings.%s is refused: it is a secret, and a value in the chart's values would be stored in a ConfigMap and in Helm's release record. Put it in the Secret credentials.existingSecret names; the chart mounts it as a file (docs/helm.md)." $name) -}}
{{- end -}}
{{- if hasKey $computed $name -}}
{{- fail (printf "settings.%s is refused: the chart sets it from %s." $name (get $computed $name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The idempotency store's values: a shared store needs a DSN of its own scheme, with a host and
without a password (a DSN lands in a ConfigMap and in Helm's release record; its password
belongs in the Secret idempotency.passwordSecret names); SQLite takes neither. No message
repeats the DSN, which may hold the very password it is refused for.
*/}}
{{- define "points-adjuster.validateStore" -}}
{{- $store := .Values.idempotency -}}
{{- if include "points-adjuster.sharedStore" . -}}
{{- $known := get (include "points-adjuster.storeSchemes" . | fromYaml) $store.backend -}}
{{- if not $store.dsn -}}
{{- fail (printf "idempotency.dsn is required with idempotency.backend %s: the store's address, %s, without a password (that goes in the Secret idempotency.passwordSecret names; docs/helm.md)." $store.backend $known.example) -}}
{{- end -}}
{{- $dsn := include "points-adjuster.storeDsn" . | fromYaml -}}
{{- if not (has $dsn.scheme $known.schemes) -}}
{{- $has := ternary "no scheme" (printf "the scheme %s://" $dsn.scheme) (eq $dsn.scheme "") -}}
{{- fail (printf "idempotency.dsn is refused: it has %s, but the DSN of the idempotency.backend %s store starts with %s://. Write it as %s." $has $store.backend (join ":// or " $known.schemes) $known.example) -}}
{{- end -}}
{{- if or (contains ":" $dsn.userinfo) (regexMatch "(?i)[?&]password=" $dsn.query) -}}
{{- fail "idempotency.dsn is refused: it carries a password, which would be stored in a ConfigMap and in Helm's release record. Remove it from the DSN, put it in a Secret and name that Secret and its key in idempotency.passwordSecret: the chart mounts it as a file and points PA_IDEMPOTENCY__PASSWORD_FILE at it (docs/helm.md)." -}}
{{- end -}}
{{- if not $dsn.hosts -}}
{{- fail (printf "idempotency.dsn is refused: it names no host. Write it as %s." $known.example) -}}
{{- end -}}
{{- else -}}
{{- if $store.dsn -}}
{{- fail "idempotency.dsn is refused with idempotency.backend sqlite: the SQLite file is idempotency.sqlite.mountPath and fileName. Set idempotency.backend to postgresql or redis to use the DSN." -}}
{{- end -}}
{{- if $store.passwordSecret.name -}}
{{- fail "idempotency.passwordSecret.name is refused with idempotency.backend sqlite: SQLite has no password. It is for the postgresql and redis stores." -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The container's resources: `resources` is what one worker needs, so with `workers` above 1
each CPU and memory quantity is multiplied by it (the parent adds little: 0.03-0.04 ms of
CPU per adjustment, docs/benchmarks.md). CPU in cores or millicores, memory as a whole number of a unit.
*/}}
{{- define "points-adjuster.resources" -}}
{{- $workers := int .Values.workers -}}
{{- if eq $workers 1 -}}
{{- toYaml .Values.resources -}}
{{- else -}}
{{- $scaled := dict -}}
{{- range $kind, $quantities := .Values.resources -}}
{{- $each := dict -}}
{{- range $name, $quantity := $quantities -}}
{{- $_ := set $each $name (include "points-adjuster.scaledQuantity" (list $kind $name $quantity $workers)) -}}
{{- end -}}
{{- $_ := set $scaled $kind $each -}}
{{- end -}}
{{- toYaml $scaled -}}
{{- end -}}
{{- end -}}

{{- define "points-adjuster.scaledQuantity" -}}
{{- $kind := index . 0 -}}
{{- $name := index . 1 -}}
{{- $quantity := toString (index . 2) -}}
{{- $workers := int (index . 3) -}}
{{- if regexMatch "^[0-9]+m$" $quantity -}}
{{- printf "%dm" (mul (int (trimSuffix "m" $quantity)) $workers) -}}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?$" $quantity -}}
{{- printf "%dm" (mul (int (mulf (float64 $quantity) 1000.0)) $workers) -}}
{{- else if regexMatch "^[0-9]+(k|M|G|T|Ki|Mi|Gi|Ti)$" $quantity -}}
{{- $unit := regexFind "(k|M|G|T|Ki|Mi|Gi|Ti)$" $quantity -}}
{{- printf "%d%s" (mul (int (trimSuffix $unit $quantity)) $workers) $unit -}}
{{- else -}}
{{- fail (printf "resources.%s.%s: %s cannot be multiplied by workers (%d); write CPU in cores or millicores (250m) and memory as a whole number of k, M, G, T, Ki, Mi, Gi or Ti" $kind $name $quantity $workers) -}}
{{- end -}}
{{- end -}}
