"""The one settings tree of points-adjuster, read once at start-up.

Every setting comes from an environment variable ``PA_<GROUP>__<NAME>`` (for instance
``PA_KAFKA__BOOTSTRAP_SERVERS``) or from a ``.env`` file in the working directory, the
environment winning. Secrets can also be read from files (``..._FILE`` settings), which is
how Kubernetes mounts them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigError
from service.redact import redact_url

ENV_PREFIX = "PA_"
ENV_NESTED_DELIMITER = "__"

LEASE_MARGIN_S = 5.0
"""How much longer a claim's lease lasts than the longest PAS call: room for the store
writes around the call, so a lease never expires under a call still in flight."""

DEFAULT_TYPE_CODES = frozenset({"GOODWILL", "CORRECTION", "PROMO", "REVERSAL"})


class KafkaSettings(BaseModel):
    """The broker, the consumer group and the topics."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    group_id: str = Field("points-adjuster", description="Consumer group of the service.")
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Static membership of the service's consumer in its group (KIP-345): a"
        " member restarting under the same id within the session timeout gets its partitions"
        " back without a rebalance. Unique per running instance (the Helm chart sets the pod"
        " name); a second consumer with the same id fences the first. Unset: dynamic membership.",
    )
    client_id: str = Field("points-adjuster", description="Kafka client id (broker logs, quotas).")
    command_topic: str = Field(
        "points-adjustments.requested.v1", description="Topic the commands are read from."
    )
    completed_topic: str = Field(
        "points-adjustments.completed.v1", description="Topic of PointsAdjustmentCompleted."
    )
    failed_topic: str = Field(
        "points-adjustments.failed.v1", description="Topic of PointsAdjustmentFailed."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading."
    )
    max_poll_records: int = Field(200, ge=1, le=10_000, description="Records per fetch.")
    max_poll_interval_ms: int = Field(
        300_000, ge=10_000, description="Longest gap between polls before the group evicts us."
    )
    session_timeout_ms: int = Field(30_000, ge=6_000, description="Consumer session timeout.")
    request_timeout_ms: int = Field(30_000, ge=1_000, description="Kafka request timeout.")
    startup_timeout_s: float = Field(
        20.0, gt=0, description="How long start-up waits for the broker before giving up."
    )
    dead_letter_topic: str = Field(
        "points-adjustments.requested.v1.dlt",
        description="Dead-letter topic: undecodable records and commands that exhausted retries.",
    )
    review_topic: str = Field(
        "points-adjustments.review.v1",
        description="Copies of commands whose outcome is unknown, for a human to check.",
    )
    max_replays: int = Field(
        3, ge=1, description="A dead letter replayed this many times is not replayed again."
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=16_384,
        le=100_000_000,
        description="Largest record the service publishes (key, value and headers). An outcome"
        " event, dead letter or review copy that would be larger is published cut down (the"
        " large parts replaced by their size and SHA-256, header pa.truncated). Keep it at or"
        " under the topics' max.message.bytes.",
    )
    linger_ms: int = Field(
        5,
        ge=0,
        le=1_000,
        description="How long the producers wait to gather outcome events, dead letters and"
        " review copies into fewer, larger requests. Longer: fewer requests when commands"
        " come one by one, and every outcome acknowledged up to that much later; measure"
        " before changing it (docs/benchmarks.md).",
    )
    outcome_framing: Literal["single-object", "confluent"] = Field(
        "single-object",
        description="How outcome events are framed: single-object (Avro single-object"
        " encoding, C3 01 + the schema's fingerprint; no registry needed) or confluent (00 +"
        " the 4-byte schema id the registry gave the outcome schema, registered or looked up"
        " at start-up; needs PA_SCHEMA_REGISTRY__URL). Commands are read in either framing"
        " whatever this says.",
    )
    transactions: bool = Field(
        False,
        description="Kafka transactions: at each commit, the outcome events, dead letters and"
        " review copies of the records whose offsets it commits go out in one transaction with"
        " those offsets, so a read_committed reader never sees an outcome twice after a crash"
        " between publishing and committing. Outcomes become visible at the commit (about once"
        " a second). Off: idempotent publishing, offsets committed after the acknowledgements.",
    )
    transaction_timeout_ms: int = Field(
        60_000,
        ge=10_000,
        le=900_000,
        description="With transactions: how long the broker lets a transaction stay open before"
        " aborting it. A transaction is open only while a commit sends its records (at most 5"
        " s); the timeout bounds how long the open transaction of a crashed instance with no"
        " successor holds read_committed readers back. At most the broker's"
        " transaction.max.timeout.ms (15 minutes by default).",
    )

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How the clients talk to the brokers: PLAINTEXT, SSL (TLS; mutual TLS with"
        " ssl_cert_file), SASL_PLAINTEXT or SASL_SSL (a user name and password over TLS)."
        " Shared by the service and its tools (check, topics, send, dlq).",
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = Field(
        None,
        description="With SASL_*: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN (PLAIN sends the"
        " password itself: over SASL_SSL only, in practice).",
    )
    sasl_username: str | None = Field(
        None, min_length=1, description="With SASL_*: the user name the service logs in as."
    )
    sasl_password_file: Path | None = Field(
        None,
        description="With SASL_*: a file holding the password (a mounted secret; one trailing"
        " newline is ignored). Read when a client is built, never logged.",
    )
    ssl_ca_file: Path | None = Field(
        None,
        description="With SSL or SASL_SSL: PEM bundle of the CAs trusted for the brokers'"
        " certificates, instead of the default bundle (certifi's).",
    )
    ssl_cert_file: Path | None = Field(
        None,
        description="With SSL or SASL_SSL: client certificate (PEM, chain after it) for mutual"
        " TLS; its key too unless ssl_key_file is set. Unset: no client certificate.",
    )
    ssl_key_file: Path | None = Field(
        None, description="Private key (PEM) of the mutual-TLS client certificate."
    )
    ssl_key_password_file: Path | None = Field(
        None, description="File holding the password of the client key (a mounted secret)."
    )
    ssl_check_hostname: bool = Field(
        True,
        description="Check that each broker's certificate names the host it is reached by (the"
        " chain is verified either way). false only for brokers whose certificates name no"
        " usable host.",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_have_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        protocol = self.security_protocol
        sasl = {
            "PA_KAFKA__SASL_MECHANISM": self.sasl_mechanism,
            "PA_KAFKA__SASL_USERNAME": self.sasl_username,
            "PA_KAFKA__SASL_PASSWORD_FILE": self.sasl_password_file,
        }
        tls = {
            "PA_KAFKA__SSL_CA_FILE": self.ssl_ca_file,
            "PA_KAFKA__SSL_CERT_FILE": self.ssl_cert_file,
            "PA_KAFKA__SSL_KEY_FILE": self.ssl_key_file,
            "PA_KAFKA__SSL_KEY_PASSWORD_FILE": self.ssl_key_password_file,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if value is None]
            if missing:
                raise ValueError(
                    f"{missing[0]}: required with PA_KAFKA__SECURITY_PROTOCOL={protocol}"
                )
        else:
            given = [name for name, value in sasl.items() if value is not None]
            if given:
                raise ValueError(
                    f"{given[0]}: has no effect with PA_KAFKA__SECURITY_PROTOCOL={protocol}"
                    " (SASL_PLAINTEXT or SASL_SSL use it)"
                )
        if not protocol.endswith("SSL"):
            given = [name for name, value in tls.items() if value is not None]
            if given:
                raise ValueError(
                    f"{given[0]}: has no effect with PA_KAFKA__SECURITY_PROTOCOL={protocol}"
                    " (SSL or SASL_SSL use it)"
                )
        if self.ssl_cert_file is None:
            for name in ("PA_KAFKA__SSL_KEY_FILE", "PA_KAFKA__SSL_KEY_PASSWORD_FILE"):
                if tls[name] is not None:
                    raise ValueError(
                        f"{name}: needs PA_KAFKA__SSL_CERT_FILE (the client certificate it goes"
                        " with)"
                    )
        return self


class PasSettings(BaseModel):
    """How to reach PAS and what it accepts."""

    # Declared before base_url, whose validator reads it.
    allow_plain_http: bool = Field(
        False,
        description="Accept an http:// base URL: a development run against the PAS sandbox"
        " only, logged as a warning at start-up. PAS itself is reached over https only.",
    )
    base_url: str = Field(
        "https://sandbox.api.mastercard.com/loyalty",
        description="PAS base URL (production: https://api.mastercard.com/loyalty); https://"
        " unless PA_PAS__ALLOW_PLAIN_HTTP=true.",
    )
    adjustment_path: str = Field("/points-adjustments", description="Path of the adjustment call.")
    method: Literal["POST", "GET"] = Field(
        "POST", description="HTTP method of the adjustment call."
    )
    connect_timeout_s: float = Field(3.0, gt=0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for each read of PAS's answer."
    )
    call_timeout_s: float = Field(
        20.0,
        gt=0,
        description="One deadline for a whole PAS call: waiting for a slot, connect, send and"
        " the whole answer (a trickling answer cannot outlive it). Must stay below"
        " PA_IDEMPOTENCY__LEASE_S.",
    )
    max_response_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest PAS answer read; a longer one is abandoned unread (as an"
        " unreadable answer). Answers are requested uncompressed; a compressed one is refused.",
    )
    pool_timeout_s: float = Field(5.0, gt=0, description="Wait for a free pooled connection.")
    http_transport: Literal["httpx", "aiohttp", "native"] = Field(
        "native",
        description="HTTP transport under httpx: ours (native, the default: HTTP/1.1"
        " keep-alive on asyncio, the least CPU), aiohttp's, or httpx's own (httpcore); see"
        " docs/benchmarks.md.",
    )
    max_connections: int = Field(100, ge=1, description="Size of the HTTP connection pool.")
    max_points: int = Field(1_000_000, ge=1, description="Largest absolute pointsToAdjust.")
    allowed_type_codes: frozenset[str] = Field(
        DEFAULT_TYPE_CODES, description="adjustmentTypeCode values accepted (JSON list)."
    )
    consumer_key: SecretStr | None = Field(
        None, description="OAuth1 consumer key from the Mastercard Developers project."
    )
    consumer_key_file: Path | None = Field(
        None, description="File holding the consumer key (a mounted secret); wins over the value."
    )
    signing_key_path: Path = Field(
        Path("keys/client-signing.p12"),
        description="OAuth1 signing key: PKCS#12 (with its certificate) or PEM.",
    )
    signing_key_password: SecretStr | None = Field(
        None, description="Password of the signing key file."
    )
    signing_key_password_file: Path | None = Field(
        None, description="File holding that password (a mounted secret); wins over the value."
    )
    encryption_certificate_path: Path = Field(
        Path("keys/pas-encryption.crt.pem"),
        description="Mastercard's encryption certificate (PEM or DER), requests go to it.",
    )
    decryption_key_path: Path = Field(
        Path("keys/client-decryption.key.pem"),
        description="Our private key for encrypted responses (PEM or PKCS#12).",
    )
    decryption_certificate_path: Path | None = Field(
        None,
        description="The certificate registered with Mastercard for encrypted responses;"
        " when set, the decryption key must match it.",
    )
    decryption_key_password: SecretStr | None = Field(
        None, description="Password of the decryption key file, if it has one."
    )
    decryption_key_password_file: Path | None = Field(
        None, description="File holding that password (a mounted secret); wins over the value."
    )
    encrypted_field: Literal["encryptedValue", "encryptedData", "encryptedPayload"] = Field(
        "encryptedValue", description="JSON field that carries the JWE in requests."
    )
    certificate_warning_days: int = Field(
        30, ge=0, description="Warn at start-up when a certificate expires within this many days."
    )
    credentials_poll_s: float = Field(
        10.0,
        ge=0,
        description="How often (seconds) the credential files are checked for a change"
        " (mtime, size, inode of the resolved path) and reloaded; 0 turns the check off"
        " (SIGHUP still reloads).",
    )
    signature_method: Literal["RSA-SHA256", "RSA-PSS"] = Field(
        "RSA-SHA256",
        description="OAuth1 oauth_signature_method: RSA-SHA256 (PKCS#1 v1.5) or RSA-PSS"
        " (SHA-256, MGF1-SHA-256, salt length 32), over the same base string.",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM bundle of the certificate authorities trusted for PAS's TLS"
        " certificate, instead of the default bundle (certifi's).",
    )
    client_cert_file: Path | None = Field(
        None,
        description="Client certificate (PEM, chain after it) for mutual TLS with PAS; its key"
        " too unless client_key_file is set. Unset: no client certificate.",
    )
    client_key_file: Path | None = Field(
        None, description="Private key (PEM) of the mutual-TLS client certificate."
    )
    client_key_password_file: Path | None = Field(
        None,
        description="File holding the password of the mutual-TLS client key (a mounted secret).",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            # httpx will not send such a request beside the OAuth1 Authorization header, so
            # every call would fail: refuse it here, with the password never echoed.
            raise ValueError(
                "must not carry credentials (user:password@): PAS authenticates every request"
                " with its OAuth1 signature"
            )
        if value.startswith("http://") and not info.data.get("allow_plain_http", False):
            raise ValueError(
                "plain http:// is refused, PAS is reached over https:// only (for a development"
                " run against the sandbox, set PA_PAS__ALLOW_PLAIN_HTTP=true)"
            )
        return value.rstrip("/")

    @field_validator("client_key_file", "client_key_password_file")
    @classmethod
    def _with_a_client_certificate(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("client_cert_file") is None:
            raise ValueError("needs PA_PAS__CLIENT_CERT_FILE (the client certificate it goes with)")
        return value

    @property
    def plain_http(self) -> bool:
        """The base URL is http:// (allowed by ``allow_plain_http``): no TLS at all."""
        return self.base_url.startswith("http://")


class ProcessingSettings(BaseModel):
    """Concurrency, ordering and back-pressure of the command loop."""

    ordering: Literal["key", "partition"] = Field(
        "key",
        description="key: many accounts at once, each account in order; partition: one"
        " command at a time per partition (the slow baseline).",
    )
    max_in_flight: int = Field(
        200, ge=1, description="Commands being processed at once (PAS calls in parallel)."
    )
    max_buffered: int = Field(
        2000, ge=1, description="Records fetched but not finished; partitions pause above it."
    )
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1_048_576,
        description="Bytes of fetched, unfinished records (keys, values, headers); partitions"
        " pause above it, as for PA_PROCESSING__MAX_BUFFERED.",
    )
    max_record_bytes: int = Field(
        65_536,
        ge=4096,
        description="Largest command record accepted (key, value and headers); a larger one"
        " fails as VALIDATION_FAILED (field 'record').",
    )
    fault_backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="Longest pause between two tries of a record held up by a fault of our own"
        " infrastructure (broker, topic, idempotency store); the first is 0.5 s, doubling.",
    )
    adaptive_concurrency: bool = Field(
        True,
        description="Fewer PAS calls in flight while PAS answers 429, 5xx or times out (halved"
        " at most once per round trip), more again as calls succeed, up to max_in_flight;"
        " after a 429, calls are also paced by rate until a minute passes without one.",
    )
    command_ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="A command older than this fails as EXPIRED instead of retrying.",
    )


class RetrySettings(BaseModel):
    """Retries of calls that provably applied nothing (unreachable, 429, Recoverable)."""

    max_attempts: int = Field(6, ge=1, description="PAS calls per command before dead-lettering.")
    initial_backoff_s: float = Field(0.5, ge=0, description="First pause; doubles each retry.")
    max_backoff_s: float = Field(30.0, ge=0, description="Longest pause between two attempts.")
    jitter: bool = Field(True, description="Full jitter: each pause is random in [0, backoff].")


class ReconciliationSettings(BaseModel):
    """Resolving unknown outcomes through PAS's adjustment history."""

    enabled: bool = Field(True, description="Look unknown outcomes up before giving up.")
    reference_in_reason: bool = Field(
        True,
        description="Append ' ref:<12 chars from the idempotency key>' to adjustmentReason so"
        " the history can show whether a request was applied.",
    )
    settle_s: float = Field(
        30.0, ge=0, description="Wait after an unknown outcome before trusting a lookup."
    )
    max_lookups: int = Field(3, ge=1, description="History lookups before OUTCOME_UNKNOWN.")


class CircuitSettings(BaseModel):
    """Stop calling PAS while it is failing."""

    failure_threshold: int = Field(
        20, ge=1, description="Consecutive failed calls that open the circuit."
    )
    open_s: float = Field(5.0, gt=0, description="How long the circuit stays open before a probe.")


StoreKind = Literal["sqlite", "memory", "postgresql", "redis"]

STORE_SCHEMES: dict[str, StoreKind] = {
    "sqlite": "sqlite",
    "memory": "memory",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "redis": "redis",
    "rediss": "redis",
}
"""The DSN schemes of ``PA_IDEMPOTENCY__DSN`` and the store each names."""


class IdempotencySettings(BaseModel):
    """Where the idempotency records live."""

    dsn: str | None = Field(
        None,
        description="The store, by URL: sqlite:///<path> (one node), postgresql://<user>@<host>"
        ":<port>/<database> (shared by many replicas), redis://<host>:<port>/<db> (rediss:// for"
        " TLS; shared) or memory:// (tests only). Without a password: see password_file. Unset:"
        " backend and sqlite_path decide.",
    )
    backend: Literal["sqlite", "memory"] = Field(
        "sqlite",
        description="When dsn is unset: sqlite (durable, one node) or memory (tests only: lost"
        " on exit).",
    )
    sqlite_path: Path = Field(
        Path("var/idempotency.sqlite3"),
        description="When dsn is unset: the SQLite database file (created if missing).",
    )
    password_file: Path | None = Field(
        None,
        description="A file holding the password of the PostgreSQL or Redis store (a mounted"
        " secret); the DSN itself never carries one.",
    )
    pool_size: int = Field(
        10, ge=1, le=200, description="PostgreSQL/Redis: connections per process."
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="PostgreSQL/Redis: the longest one store call (or connecting) may take"
        " before it fails as unavailable.",
    )
    redis_prefix: str = Field(
        "pa",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Redis: the prefix of every key the store writes (one per service).",
    )
    redis_require_durable: bool = Field(
        True,
        description="Redis: refuse to start unless the server runs appendonly yes with"
        " appendfsync always (a Redis that loses an acknowledged claim lets a credit be"
        " applied twice). false: start anyway, with a loud warning.",
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        description="How long a claim stays exclusive before another worker may take it.",
    )
    retention_s: float = Field(
        30 * 86_400.0, gt=0, description="Terminal records older than this are pruned."
    )
    prune_interval_s: float = Field(3600.0, gt=0, description="How often pruning runs.")
    allow_empty_store: bool = Field(
        False,
        description="Start even when the store is new but the consumer group already has"
        " committed offsets (the store was lost or replaced, so re-read commands could be"
        " applied twice). For a deliberate reset only; logged loudly.",
    )

    @field_validator("dsn")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in STORE_SCHEMES:
            raise ValueError(
                "must start with sqlite:///, postgresql://, redis://, rediss:// or memory://"
            )
        userinfo = rest.split("/", 1)[0].rpartition("@")[0]
        query = rest.partition("?")[2]
        names = [part.partition("=")[0].lower() for part in query.replace(";", "&").split("&")]
        secret = ("password", "passwd", "pass", "pwd", "secret", "token")
        if ":" in userinfo or any(name.endswith(secret) for name in names):
            raise ValueError(
                "must not carry a password (user:password@ or ?password=): put it in a file"
                " named by"
                " PA_IDEMPOTENCY__PASSWORD_FILE"
            )
        if STORE_SCHEMES[scheme.lower()] == "sqlite" and not rest.lstrip("/"):
            raise ValueError("sqlite:/// needs a file path (sqlite:///var/idempotency.sqlite3)")
        return value

    @property
    def kind(self) -> StoreKind:
        """Which store: the DSN's scheme, or ``backend`` when there is no DSN."""
        if self.dsn is None:
            return self.backend
        return STORE_SCHEMES[self.dsn.partition("://")[0].lower()]

    @property
    def sqlite_file(self) -> Path:
        """The SQLite database file: the DSN's path (``sqlite:///rel`` or ``sqlite:////abs``),
        or ``sqlite_path``."""
        if self.dsn is None or self.kind != "sqlite":
            return self.sqlite_path
        return Path(self.dsn.partition("://")[2][1:])

    @property
    def where(self) -> str:
        """The store for a log line or a message: its kind and place, never a password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.sqlite_file}"
        if self.kind == "memory":
            return "memory"
        assert self.dsn is not None
        return redact_url(self.dsn)

    @property
    def setting(self) -> str:
        """The setting an operator changes to point at another store."""
        return "PA_IDEMPOTENCY__DSN" if self.dsn is not None else "PA_IDEMPOTENCY__SQLITE_PATH"

    def password(self) -> SecretStr | None:
        """The store's password from ``password_file`` (trailing newline stripped), or None;
        raise ``ConfigError`` naming the setting when the file cannot be read. A ``SecretStr``
        from the moment it is read: the store unwraps it where it connects."""
        if self.password_file is None:
            return None
        try:
            return SecretStr(self.password_file.read_text(encoding="utf-8").rstrip("\r\n"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                "PA_IDEMPOTENCY__PASSWORD_FILE",
                f"cannot read {self.password_file}: {getattr(exc, 'strerror', None) or exc}",
            ) from None


class SchemaRegistrySettings(BaseModel):
    """A schema registry speaking the Confluent REST API (Confluent's, Apicurio's ccompat)."""

    url: str | None = Field(
        None,
        min_length=1,
        description="Base URL of the registry's Confluent-compatible API (for instance"
        " http://registry:8081, or http://apicurio:8080/apis/ccompat/v7). Unset: no registry:"
        " Confluent-framed commands are dead-lettered as such and single-object commands are"
        " read with the shipped schemas only.",
    )
    subject_strategy: Literal["topic", "record", "topic_record"] = Field(  # SubjectStrategy
        "topic",
        description="How subjects are named: topic (<topic>-value, Confluent's default),"
        " record (the record's full name) or topic_record (<topic>-<full name>).",
    )
    username: str | None = Field(
        None, min_length=1, description="Basic auth user name (with password_file)."
    )
    password_file: Path | None = Field(
        None,
        description="Basic auth: a file holding the password (one trailing newline ignored);"
        " read at start-up, never logged.",
    )
    bearer_token_file: Path | None = Field(
        None,
        description="Bearer auth: a file holding the token, read again whenever it changes"
        " (a token refreshed by a side-car). Not with username.",
    )
    ca_file: Path | None = Field(
        None,
        description="PEM bundle of the CA(s) that signed the registry's certificate (https);"
        " unset: the system's trust store.",
    )
    timeout_s: float = Field(5.0, gt=0, le=120, description="Timeout of one registry request.")
    max_retries: int = Field(
        3,
        ge=0,
        le=20,
        description="Retries of a request that failed for a transient reason (connection,"
        " timeout, 5xx, 429), with exponential backoff from retry_backoff_s; then the registry"
        " counts as unavailable (a command waiting for a schema is tried again later, its"
        " partition paused).",
    )
    retry_backoff_s: float = Field(
        0.2, ge=0, le=30, description="First pause between retries; doubles each retry."
    )
    startup_wait_s: float = Field(
        60.0,
        ge=0,
        description="With PA_KAFKA__OUTCOME_FRAMING=confluent: how long start-up keeps trying"
        " to register (or look up) the outcome schemas while the registry is unreachable,"
        " before it fails naming PA_SCHEMA_REGISTRY__URL.",
    )
    rescan_interval_s: float = Field(
        60.0,
        ge=0,
        description="A single-object command with an unknown fingerprint makes the service read"
        " the versions registered under the command subject again, at most this often.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _auth_is_complete(self) -> SchemaRegistrySettings:
        if (self.username is None) != (self.password_file is None):
            given, missing = (
                ("PA_SCHEMA_REGISTRY__USERNAME", "PA_SCHEMA_REGISTRY__PASSWORD_FILE")
                if self.username is not None
                else ("PA_SCHEMA_REGISTRY__PASSWORD_FILE", "PA_SCHEMA_REGISTRY__USERNAME")
            )
            raise ValueError(f"{missing}: required with {given} (basic auth)")
        if self.username is not None and self.bearer_token_file is not None:
            raise ValueError(
                "PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE: not with PA_SCHEMA_REGISTRY__USERNAME"
                " (basic or bearer auth, not both)"
            )
        return self

    def password(self) -> SecretStr | None:
        """The basic auth password from ``password_file``, or None; ``ConfigError`` naming
        the setting when the file cannot be read."""
        return _read_secret(self.password_file, "PA_SCHEMA_REGISTRY__PASSWORD_FILE")

    def bearer_token(self) -> SecretStr | None:
        """The bearer token from ``bearer_token_file``, or None; ``ConfigError`` naming the
        setting when the file cannot be read."""
        return _read_secret(self.bearer_token_file, "PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE")


def _read_secret(path: Path | None, setting: str) -> SecretStr | None:
    if path is None:
        return None
    try:
        return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            setting, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


class MetricsSettings(BaseModel):
    """The HTTP endpoint serving /metrics, /livez (alias /healthz) and /readyz."""

    enabled: bool = Field(True, description="Serve the endpoint.")
    host: str = Field(
        "127.0.0.1",
        description="Listen address. Loopback by default, so nothing is exposed by accident;"
        " set 0.0.0.0 (or the pod IP) where Prometheus scrapes from outside (the Helm chart"
        " and the compose file do).",
    )
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 picks a free one).")


class LogSettings(BaseModel):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["json", "console"] = Field("json", description="json lines or console text.")


class TracingSettings(BaseModel):
    """Trace export. The W3C trace context of each command is always carried through."""

    otlp_endpoint: str | None = Field(
        None,
        min_length=1,
        description="OTLP/HTTP traces endpoint (for instance"
        " http://otel-collector:4318/v1/traces) the spans of each record's handling and of each"
        " PAS call are exported to. Needs the otel extra (pip install 'points-adjuster[otel]')."
        " Unset: nothing is exported and no OpenTelemetry package is loaded.",
    )


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    pas: PasSettings = PasSettings()
    processing: ProcessingSettings = ProcessingSettings()
    retry: RetrySettings = RetrySettings()
    reconciliation: ReconciliationSettings = ReconciliationSettings()
    circuit: CircuitSettings = CircuitSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="On SIGTERM, how long in-flight commands may take to finish (one budget"
        " for all of them); the final commit and stopping the Kafka clients add at most 9 s"
        " more when the broker does not answer.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Consumer processes of one `run` (`run --workers N` overrides it): above 1,"
        " a parent process starts N workers, each a full consumer in the same group, sharing"
        " the idempotency store (SQLite on this host, or a networked store), and serves one"
        " /metrics, /livez and /readyz for them all. Not with the memory store.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The asyncio event loop: uvloop (C, on libuv; about 5 % less CPU per"
        " adjustment) or the standard library's.",
    )

    @model_validator(mode="after")
    def _confluent_framing_has_a_registry(self) -> Settings:
        if self.kafka.outcome_framing == "confluent" and self.schema_registry.url is None:
            raise ValueError(
                "PA_KAFKA__OUTCOME_FRAMING: confluent needs a schema registry"
                " (set PA_SCHEMA_REGISTRY__URL, or use single-object)"
            )
        return self

    @model_validator(mode="after")
    def _workers_share_a_store(self) -> Settings:
        if self.workers > 1 and self.idempotency.kind == "memory":
            raise ValueError(
                f"PA_WORKERS: {self.workers} workers need a store they share (SQLite or a"
                " networked one); the memory store lives in one process"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> Settings:
        longest = self.pas.call_timeout_s + LEASE_MARGIN_S
        if self.idempotency.lease_s < longest:
            raise ValueError(
                f"PA_IDEMPOTENCY__LEASE_S: {self.idempotency.lease_s:g} s must be at least"
                f" PA_PAS__CALL_TIMEOUT_S + {LEASE_MARGIN_S:g} s ({longest:g} s), or another"
                " worker could take over a claim whose request is still in flight"
            )
        return self


def env_name(location: tuple[int | str, ...]) -> str:
    """The environment variable of a settings location such as ``("kafka", "group_id")``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in location).upper()


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise ``ConfigError`` naming the first wrong one."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(part for part in first["loc"] if not isinstance(part, int))
        message = str(first["msg"]).removeprefix("Value error, ")
        if not location or re.match(r"PA_[A-Z0-9_]+: ", message):
            # a rule across settings (of the whole tree, or of one group): "NAME: problem"
            name, _, problem = message.partition(": ")
            raise ConfigError(name, problem) from exc
        given = first.get("input")
        if isinstance(given, str) and "://" in given:
            given = redact_url(given)  # a URL may carry a password: never print it
        shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
        problem = str(first["msg"]).removeprefix("Value error, ")  # pydantic's, not ours
        raise ConfigError(env_name(location), f"{problem}{shown}") from exc
