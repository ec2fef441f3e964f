{{/*
Kafka's security, PAS's TLS and the schema registry (docs/helm.md, Secure Kafka, PAS mTLS and
the schema registry): the plain values become settings in the ConfigMap, every secret or
certificate file comes from `key` of the existing Secret `name` the values give (an empty name:
not mounted), mounted read-only in the credentials volume like the PAS credentials, with its
setting pointing at it. No message here repeats the registry's URL: a refused one may carry a
password.
*/}}

{{/*
The optional Secret files: the values entry (path under .Values), the file name in the
credentials mount and the setting that points at it.
*/}}
{{- define "points-adjuster.securityFiles" -}}
- {value: [kafka, sasl, passwordSecret], file: kafka-sasl-password, setting: PA_KAFKA__SASL_PASSWORD_FILE}
- {value: [kafka, tls, caSecret], file: kafka-ca, setting: PA_KAFKA__SSL_CA_FILE}
- {value: [kafka, tls, clientCertificateSecret], file: kafka-client-certificate, setting: PA_KAFKA__SSL_CERT_FILE}
- {value: [kafka, tls, clientKeySecret], file: kafka-client-key, setting: PA_KAFKA__SSL_KEY_FILE}
- {value: [kafka, tls, keyPasswordSecret], file: kafka-client-key-password, setting: PA_KAFKA__SSL_KEY_PASSWORD_FILE}
- {value: [pasTls, caSecret], file: pas-ca, setting: PA_PAS__CA_FILE}
- {value: [pasTls, clientCertificateSecret], file: pas-client-certificate, setting: PA_PAS__CLIENT_CERT_FILE}
- {value: [pasTls, clientKeySecret], file: pas-client-key, setting: PA_PAS__CLIENT_KEY_FILE}
- {value: [pasTls, keyPasswordSecret], file: pas-client-key-password, setting: PA_PAS__CLIENT_KEY_PASSWORD_FILE}
- {value: [schemaRegistry, passwordSecret], file: schema-registry-password, setting: PA_SCHEMA_REGISTRY__PASSWORD_FILE}
- {value: [schemaRegistry, bearerTokenSecret], file: schema-registry-bearer-token, setting: PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE}
- {value: [schemaRegistry, caSecret], file: schema-registry-ca, setting: PA_SCHEMA_REGISTRY__CA_FILE}
{{- end -}}

{{/* The files above whose Secret the values name, as mountedCredentials entries. */}}
{{- define "points-adjuster.mountedSecurityFiles" -}}
{{- $mounted := list -}}
{{- range (include "points-adjuster.securityFiles" . | fromYamlArray) -}}
{{- $entry := $.Values -}}
{{- range .value -}}
{{- $entry = index $entry . -}}
{{- end -}}
{{- if $entry.name -}}
{{- $mounted = append $mounted (dict "file" .file "setting" .setting "secret" $entry.name "key" $entry.key) -}}
{{- end -}}
{{- end -}}
{{- toYaml $mounted -}}
{{- end -}}

{{/* The plain settings of the security values (the files' settings come with the mounts). */}}
{{- define "points-adjuster.securitySettings" -}}
{{- $kafka := .Values.kafka -}}
PA_KAFKA__SECURITY_PROTOCOL: {{ $kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" $kafka.securityProtocol }}
PA_KAFKA__SASL_MECHANISM: {{ $kafka.sasl.mechanism | quote }}
PA_KAFKA__SASL_USERNAME: {{ $kafka.sasl.username | quote }}
{{- end }}
{{- if hasSuffix "SSL" $kafka.securityProtocol }}
PA_KAFKA__SSL_CHECK_HOSTNAME: {{ $kafka.tls.checkHostname | toString | quote }}
{{- end }}
{{- with .Values.schemaRegistry.url }}
PA_SCHEMA_REGISTRY__URL: {{ . | quote }}
{{- end }}
{{- with .Values.schemaRegistry.username }}
PA_SCHEMA_REGISTRY__USERNAME: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The settings the security values set: refused in the `settings` map, naming the value. */}}
{{- define "points-adjuster.securityComputed" -}}
PA_KAFKA__SECURITY_PROTOCOL: kafka.securityProtocol
PA_KAFKA__SASL_MECHANISM: kafka.sasl.mechanism
PA_KAFKA__SASL_USERNAME: kafka.sasl.username
PA_KAFKA__SSL_CHECK_HOSTNAME: kafka.tls.checkHostname
PA_SCHEMA_REGISTRY__URL: schemaRegistry.url
PA_SCHEMA_REGISTRY__USERNAME: schemaRegistry.username
{{- range (include "points-adjuster.securityFiles" . | fromYamlArray) }}
{{ .setting }}: {{ join "." .value }}
{{- end }}
{{- end -}}

{{/*
A client certificate goes with its key and a key password with a key: the certificate, key
and password entries of one group (kafka.tls or pasTls), named by their values path.
Arguments: (list $group "kafka.tls").
*/}}
{{- define "points-adjuster.validateClientCertificate" -}}
{{- $group := index . 0 -}}
{{- $path := index . 1 -}}
{{- if and $group.clientCertificateSecret.name (not $group.clientKeySecret.name) -}}
{{- fail (printf "%s.clientCertificateSecret.name is set without %s.clientKeySecret.name: a client certificate needs its private key. For a kubernetes.io/tls Secret name it in both (keys tls.crt and tls.key; docs/helm.md)." $path $path) -}}
{{- end -}}
{{- if and $group.clientKeySecret.name (not $group.clientCertificateSecret.name) -}}
{{- fail (printf "%s.clientKeySecret.name is set without %s.clientCertificateSecret.name: a private key is only used with the client certificate it belongs to." $path $path) -}}
{{- end -}}
{{- if and $group.keyPasswordSecret.name (not $group.clientKeySecret.name) -}}
{{- fail (printf "%s.keyPasswordSecret.name is set without %s.clientKeySecret.name: the password opens the client key, and there is none." $path $path) -}}
{{- end -}}
{{- end -}}

{{/* The refusals of inconsistent security values, included by points-adjuster.validate. */}}
{{- define "points-adjuster.validateSecurity" -}}
{{- $kafka := .Values.kafka -}}
{{- $protocol := $kafka.securityProtocol -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- if not $kafka.sasl.username -}}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol %s: the user the service logs in to the brokers as." $protocol) -}}
{{- end -}}
{{- if not $kafka.sasl.passwordSecret.name -}}
{{- fail (printf "kafka.sasl.passwordSecret.name is required with kafka.securityProtocol %s: the existing Secret holding the SASL password (its key kafka.sasl.passwordSecret.key), mounted as the file PA_KAFKA__SASL_PASSWORD_FILE names (docs/helm.md)." $protocol) -}}
{{- end -}}
{{- else -}}
{{- if or $kafka.sasl.username $kafka.sasl.passwordSecret.name -}}
{{- fail (printf "kafka.sasl is refused with kafka.securityProtocol %s: a SASL user name and password are only used with SASL_PLAINTEXT or SASL_SSL." $protocol) -}}
{{- end -}}
{{- end -}}
{{- if not (hasSuffix "SSL" $protocol) -}}
{{- range $name := list "caSecret" "clientCertificateSecret" "clientKeySecret" "keyPasswordSecret" -}}
{{- if (index $kafka.tls $name).name -}}
{{- fail (printf "kafka.tls.%s.name is refused with kafka.securityProtocol %s: the brokers are reached without TLS. Set kafka.securityProtocol to SSL or SASL_SSL to use it." $name $protocol) -}}
{{- end -}}
{{- end -}}
{{- if not $kafka.tls.checkHostname -}}
{{- fail (printf "kafka.tls.checkHostname false is refused with kafka.securityProtocol %s: there is no certificate to check without TLS." $protocol) -}}
{{- end -}}
{{- end -}}
{{- include "points-adjuster.validateClientCertificate" (list $kafka.tls "kafka.tls") -}}
{{- include "points-adjuster.validateClientCertificate" (list .Values.pasTls "pasTls") -}}
{{- include "points-adjuster.validateRegistry" . -}}
{{- end -}}

{{/*
The schema registry's values: an http(s) URL without credentials, basic auth (a user name and
its password Secret) or a bearer token, not both, and nothing of it without the URL.
*/}}
{{- define "points-adjuster.validateRegistry" -}}
{{- $registry := .Values.schemaRegistry -}}
{{- $url := $registry.url -}}
{{- if not $url -}}
{{- range $name := list "username" "passwordSecret" "bearerTokenSecret" "caSecret" -}}
{{- $value := index $registry $name -}}
{{- if or (and (kindIs "string" $value) $value) (and (kindIs "map" $value) $value.name) -}}
{{- fail (printf "schemaRegistry.%s is refused without schemaRegistry.url: it is for the registry that URL names." $name) -}}
{{- end -}}
{{- end -}}
{{- $framing := index .Values.settings "PA_KAFKA__OUTCOME_FRAMING" -}}
{{- if eq (toString $framing) "confluent" -}}
{{- fail "schemaRegistry.url is required with settings.PA_KAFKA__OUTCOME_FRAMING confluent: the outcome schemas are registered there (docs/helm.md)." -}}
{{- end -}}
{{- else -}}
{{- $parsed := include "points-adjuster.registryUrl" . | fromYaml -}}
{{- if not (has $parsed.scheme (list "http" "https")) -}}
{{- fail "schemaRegistry.url is refused: it starts neither with http:// nor with https://. Write it as https://<host>[:<port>][/<path>] (the registry's Confluent-compatible API)." -}}
{{- end -}}
{{- if $parsed.userinfo -}}
{{- fail "schemaRegistry.url is refused: it carries credentials (user[:password]@), which would be stored in a ConfigMap and in Helm's release record. Remove them: the user name goes in schemaRegistry.username, the password in the Secret schemaRegistry.passwordSecret names (PA_SCHEMA_REGISTRY__PASSWORD_FILE; docs/helm.md)." -}}
{{- end -}}
{{- if not $parsed.host -}}
{{- fail "schemaRegistry.url is refused: it names no host. Write it as https://<host>[:<port>][/<path>]." -}}
{{- end -}}
{{- if and $registry.caSecret.name (eq $parsed.scheme "http") -}}
{{- fail "schemaRegistry.caSecret.name is refused with an http:// schemaRegistry.url: the registry is reached without TLS, so there is no certificate to trust." -}}
{{- end -}}
{{- end -}}
{{- if and $registry.username (not $registry.passwordSecret.name) -}}
{{- fail "schemaRegistry.passwordSecret.name is required with schemaRegistry.username (basic auth): the existing Secret holding the password." -}}
{{- end -}}
{{- if and $registry.passwordSecret.name (not $registry.username) -}}
{{- fail "schemaRegistry.username is required with schemaRegistry.passwordSecret.name (basic auth): the user the password belongs to." -}}
{{- end -}}
{{- if and $registry.bearerTokenSecret.name $registry.username -}}
{{- fail "schemaRegistry.bearerTokenSecret.name is refused with schemaRegistry.username: the registry takes basic auth or a bearer token, not both." -}}
{{- end -}}
{{- end -}}

{{/*
schemaRegistry.url taken apart: scheme (lower case), userinfo (before the last "@" of the
authority), host (what follows it, with the port if any) and port (the one named, else the
scheme's: 443 or 80). Never printed whole.
*/}}
{{- define "points-adjuster.registryUrl" -}}
{{- $url := .Values.schemaRegistry.url -}}
{{- $scheme := "" -}}
{{- $rest := $url -}}
{{- if contains "://" $url -}}
{{- $parts := splitn "://" 2 $url -}}
{{- $scheme = lower $parts._0 -}}
{{- $rest = $parts._1 -}}
{{- end -}}
{{- $authority := regexFind "^[^/?#]*" $rest -}}
{{- $userinfo := "" -}}
{{- $host := $authority -}}
{{- if contains "@" $authority -}}
{{- $userinfo = regexReplaceAll "@[^@]*$" $authority "" -}}
{{- $host = regexReplaceAll "^.*@" $authority "" -}}
{{- end -}}
{{- $port := trimPrefix ":" (regexFind ":[0-9]+$" $host) -}}
{{- if not $port -}}
{{- $port = ternary "80" "443" (eq $scheme "http") -}}
{{- end -}}
{{- toYaml (dict "scheme" $scheme "userinfo" $userinfo "host" $host "port" (int $port)) -}}
{{- end -}}

{{/*
The TCP ports of the registry the NetworkPolicy opens: networkPolicy.schemaRegistry.ports, or
the one schemaRegistry.url names (443 or 80 by its scheme when it names none).
*/}}
{{- define "points-adjuster.registryPorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.schemaRegistry.ports -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- if not $ports -}}
{{- $ports = list (include "points-adjuster.registryUrl" . | fromYaml).port -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}
