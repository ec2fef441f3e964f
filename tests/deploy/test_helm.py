"""The Helm chart (helm/points-adjuster), checked without a cluster.

Helm is built from source into .cache/bin (`make helm-tools`, a prerequisite of `make test`).
Every values file (the defaults and those of ci/) is linted with `helm lint --strict` and
rendered with `helm template`; every rendered manifest is validated offline against the
Kubernetes JSON schemas that kubernetes-validate ships, except the Prometheus Operator's
resources, which those schemas do not know: they are checked here for the shape the operator
reads. The idempotency store is SQLite (one replica, its volume) by default; ci/postgres-three
and ci/redis-two run several replicas on a shared store. With CI=true a missing helm fails the
run; elsewhere the tests are skipped, saying why.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
from pydantic import BaseModel, SecretStr

from service.settings import (
    IdempotencySettings,
    KafkaSettings,
    PasSettings,
    SchemaRegistrySettings,
    Settings,
    env_name,
)
from tests.deploy import test_observability as observability

# PyPI's PyYAML comes with kubernetes-validate; its type stubs are no dependency of the
# project, so it is loaded as a plain module (its functions typed Any).
yaml = importlib.import_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "points-adjuster"
LOCAL_HELM = ROOT / ".cache" / "bin" / "helm"
OPERATIONS_PAGE = ROOT / "docs" / "operations.md"
KUBERNETES_VERSION = "1.30.0"
RELEASE, NAMESPACE = "pa", "loyalty"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
VALUES_FILES: list[Path | None] = [None, *CI_VALUES]
VALUES_IDS = ["defaults", *(path.stem for path in CI_VALUES)]
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

BROKER_GONE_MARGIN_S = 12
"""What the drain may take beyond PA_SHUTDOWN_TIMEOUT_S with the broker gone, as
docs/operations.md states it (a test below keeps the two in step)."""

SECRETS_MOUNT = PurePosixPath("/var/run/secrets/points-adjuster")
STORE_PASSWORD_FILE = SECRETS_MOUNT / "idempotency-password"
POSTGRES_THREE = CHART / "ci" / "postgres-three.yaml"
REDIS_TWO = CHART / "ci" / "redis-two.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

Manifest = dict[str, Any]


# -- helm ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary of `make helm-tools`, else one on PATH; none fails under CI=true."""
    if LOCAL_HELM.exists():
        return LOCAL_HELM
    found = shutil.which("helm")
    if found:
        return Path(found)
    reason = (
        f"no helm: {LOCAL_HELM.relative_to(ROOT)} is missing and none is on PATH"
        " (`make helm-tools` builds it; it needs Go)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False
    )


def values_args(values: Path | None, overrides: dict[str, str] | None) -> list[str]:
    args = ["-f", str(values)] if values is not None else []
    for name, value in (overrides or {}).items():
        args += ["--set-json", f"{name}={value}"]
    return args


def template(
    helm: Path, values: Path | None = None, overrides: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; ``overrides`` are --set-json pairs (JSON values)."""
    return run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBERNETES_VERSION,
        *values_args(values, overrides),
    )


@cache
def _rendered(helm: Path, values: Path | None, overrides: tuple[tuple[str, str], ...]) -> str:
    result = template(helm, values, dict(overrides))
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(
    helm: Path, values: Path | None = None, overrides: dict[str, str] | None = None
) -> list[Manifest]:
    """The manifests the chart renders (empty documents left out)."""
    text = _rendered(helm, values, tuple(sorted((overrides or {}).items())))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def refusal(helm: Path, values: Path | None = None, overrides: dict[str, str] | None = None) -> str:
    """The error of a rendering that must fail."""
    result = template(helm, values, overrides)
    assert result.returncode != 0, "rendered, but should have been refused"
    return " ".join(result.stderr.split())


def values_of(values: Path | None) -> dict[str, Any]:
    """What a values file says (empty for the defaults)."""
    if values is None:
        return {}
    loaded = yaml.safe_load(values.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def backend_of(values: Path | None) -> str:
    """The idempotency backend a values file chooses (sqlite, the default, when it is silent)."""
    backend = values_of(values).get("idempotency", {}).get("backend", "sqlite")
    assert isinstance(backend, str)
    return backend


def shared_store(backend: str, dsn: str) -> dict[str, str]:
    """--set-json overrides choosing a shared store."""
    return {"idempotency.backend": f'"{backend}"', "idempotency.dsn": f'"{dsn}"'}


def one(manifests: list[Manifest], kind: str) -> Manifest:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


def container(manifests: list[Manifest]) -> Manifest:
    (main,) = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert isinstance(main, dict)
    return main


def settings_passed(manifests: list[Manifest]) -> dict[str, Any]:
    """Every PA_* variable the pod gets: the ConfigMap's entries and the container's env."""
    passed: dict[str, Any] = dict(one(manifests, "ConfigMap")["data"])
    for entry in container(manifests).get("env", []):
        passed[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return {name: value for name, value in passed.items() if name.startswith("PA_")}


def setting_names(
    model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any]]:
    """Each environment variable of the settings tree, with its field's annotation."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_names(annotation, (*prefix, name))
        else:
            yield env_name((*prefix, name)), annotation


ALL_SETTINGS = {name for name, _ in setting_names()}
SECRET_SETTINGS = {
    name for name, annotation in setting_names() if SecretStr in getattr(annotation, "__args__", ())
}


# -- lint and schema validation --------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_the_chart_lints_strictly(helm: Path, values: Path | None) -> None:
    """`helm lint --strict` finds nothing to warn about with each values file."""
    result = run_helm(
        helm,
        "lint",
        "--strict",
        "--kube-version",
        KUBERNETES_VERSION,
        str(CHART),
        *values_args(values, None),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_every_rendered_manifest_is_valid_for_kubernetes(helm: Path, values: Path | None) -> None:
    """Each manifest of Kubernetes' own kinds passes the Kubernetes schemas offline, strictly
    (an unknown field is an error); only the Prometheus Operator's kinds are left to the
    structural checks below."""
    manifests = render(helm, values)
    assert {m["kind"] for m in manifests} >= {"StatefulSet", "ConfigMap", "Service"}
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        assert manifest["metadata"]["namespace"] == NAMESPACE


def test_the_validator_refuses_what_kubernetes_would() -> None:
    """The offline validation is no rubber stamp: a misspelt securityContext field fails it."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "securityContext": {"runAsUsr": 10001}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"replicaCount": '"one"'}, "/replicaCount"),
        ({"idempotency.backend": '"postgres"'}, "/idempotency/backend"),
        ({"idempotency.backend": '"memory"'}, "/idempotency/backend"),
        ({"idempotency.dsn": "5432"}, "/idempotency/dsn"),
        ({"idempotency.passwordSecret.name": '"Store_Password"'}, "/idempotency/passwordSecret"),
        ({"idempotency.passwordSecret.key": '""'}, "/idempotency/passwordSecret/key"),
        ({"networkPolicy.store.ports": "[0]"}, "/networkPolicy/store/ports"),
        ({"credentials.existingSecret": '""'}, "/credentials/existingSecret"),
        ({"credentials.decryptionKeyPassword.key": '""'}, "/credentials/decryptionKeyPassword"),
        ({"settings.PA_KAFKA__BOOTSTRAP_SERVER": '"kafka:9092"'}, "PA_KAFKA__BOOTSTRAP_SERVER"),
        ({"settings.PA_SHUTDOWN_TIMEOUT_S": '"twenty"'}, "/settings/PA_SHUTDOWN_TIMEOUT_S"),
        ({"settings.PA_SHUTDOWN_TIMEOUT_S": "0"}, "/settings/PA_SHUTDOWN_TIMEOUT_S"),
        ({"metrics.port": "70000"}, "/metrics/port"),
        ({"terminationGrace.slackSeconds": "0"}, "/terminationGrace/slackSeconds"),
        ({"networkPolicy.kafka.ports": "[]"}, "/networkPolicy/kafka/ports"),
        ({"serviceMonitor.interval": '"often"'}, "/serviceMonitor/interval"),
        ({"replicas": "1"}, "replicas"),
    ],
)
def test_a_wrong_value_is_refused_by_the_schema(
    helm: Path, overrides: dict[str, str], words: str
) -> None:
    """values.schema.json refuses wrong types, enums, empty Secret names and keys, unknown
    settings and unknown keys at template time, naming the value at fault."""
    error = refusal(helm, overrides=overrides)
    assert "values don't meet the specifications of the schema" in error
    assert words in error


def test_the_schema_knows_every_setting_and_nothing_else() -> None:
    """The settings map accepts exactly the variables the service reads, so a misspelt one is
    refused instead of silently ignored, and a new setting must be added to the schema."""
    schema = yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))
    names = schema["properties"]["settings"]["propertyNames"]["enum"]
    assert len(names) == len(set(names))
    assert set(names) == ALL_SETTINGS


def test_the_chart_version_follows_the_product() -> None:
    """Chart.yaml is apiVersion v2 and its appVersion is the product's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    product = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == product["project"]["version"]


# -- the refusal of a second replica on SQLite -----------------------------------------------


@pytest.mark.parametrize("replicas", [2, 3])
def test_more_than_one_replica_on_sqlite_is_refused_with_the_reason(
    helm: Path, replicas: int
) -> None:
    """replicaCount above 1 with the SQLite store fails, saying that a moved partition would
    meet a store without its claims and a re-delivered command would be applied twice, and
    naming the shared stores that allow several replicas."""
    error = refusal(helm, overrides={"replicaCount": str(replicas)})
    assert f"replicaCount: {replicas} is refused with idempotency.backend sqlite" in error
    assert "a store that knows none of its claims" in error
    assert "applied twice" in error
    assert "idempotency.backend postgresql (recommended) or redis" in error
    assert "Several replicas on a shared store" in error


@pytest.mark.parametrize("replicas", [0, 1])
def test_zero_or_one_replica_renders(helm: Path, replicas: int) -> None:
    """One replica, or none (stopped), is what SQLite allows."""
    statefulset = one(render(helm, overrides={"replicaCount": str(replicas)}), "StatefulSet")
    assert statefulset["spec"]["replicas"] == replicas


# -- several replicas on a shared store ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "replicas", "port", "secret"),
    [
        (POSTGRES_THREE, 3, 5432, ("points-adjuster-store", "password")),
        (REDIS_TWO, 2, 6380, ("points-adjuster-redis", "redis-password")),
    ],
    ids=["postgres-three", "redis-two"],
)
def test_a_shared_store_runs_several_replicas(
    helm: Path, values: Path, replicas: int, port: int, secret: tuple[str, str]
) -> None:
    """On PostgreSQL or Redis the StatefulSet runs several replicas started in parallel, each
    given the values' DSN and a password file from the Secret the values name, read-only in
    the credentials volume; no volume claim, store volume or claim retention is rendered; the
    NetworkPolicy lets the pods reach the store's port and the disruption budget evicts one
    pod at a time."""
    manifests = render(helm, values)
    statefulset = one(manifests, "StatefulSet")["spec"]
    assert statefulset["replicas"] == replicas
    assert statefulset["podManagementPolicy"] == "Parallel"
    assert statefulset["updateStrategy"] == {"type": "RollingUpdate"}
    assert "volumeClaimTemplates" not in statefulset
    assert "persistentVolumeClaimRetentionPolicy" not in statefulset
    assert "PersistentVolumeClaim" not in {m["kind"] for m in manifests}
    passed = settings_passed(manifests)
    assert passed["PA_IDEMPOTENCY__DSN"] == values_of(values)["idempotency"]["dsn"]
    assert PurePosixPath(passed["PA_IDEMPOTENCY__PASSWORD_FILE"]) == STORE_PASSWORD_FILE
    main = container(manifests)
    assert {m["name"] for m in main["volumeMounts"]} == {"tmp", "credentials"}
    credentials = next(m for m in main["volumeMounts"] if m["name"] == "credentials")
    assert credentials["readOnly"] is True
    assert PurePosixPath(credentials["mountPath"]) == STORE_PASSWORD_FILE.parent
    volumes = statefulset["template"]["spec"]["volumes"]
    assert {v["name"] for v in volumes} == {"tmp", "credentials"}
    (projected,) = [v["projected"] for v in volumes if v["name"] == "credentials"]
    (store,) = [
        s["secret"]
        for s in projected["sources"]
        if s["secret"]["items"][0]["path"] == STORE_PASSWORD_FILE.name
    ]
    assert (store["name"], store["items"][0]["key"]) == secret
    egress = one(manifests, "NetworkPolicy")["spec"]["egress"]
    store_rules = [r for r in egress if {"port": port, "protocol": "TCP"} in r["ports"]]
    assert len(store_rules) == 1
    assert store_rules[0]["ports"] == [{"port": port, "protocol": "TCP"}]
    narrowed = values_of(values).get("networkPolicy", {}).get("store", {}).get("to", [])
    assert store_rules[0].get("to", []) == narrowed
    budget = one(manifests, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_the_store_settings_load_as_the_service_reads_them(helm: Path, values: Path | None) -> None:
    """The PA_IDEMPOTENCY__* variables the pod gets load as the service's idempotency settings
    and name the store the values chose: SQLite by backend and path, PostgreSQL or Redis by
    the DSN's scheme, with the pool, timeout and Redis settings of the values file."""
    passed = settings_passed(render(helm, values))
    prefix = env_name(("idempotency", ""))
    fields = {
        name.removeprefix(prefix).lower(): value
        for name, value in passed.items()
        if name.startswith(prefix)
    }
    store = IdempotencySettings.model_validate(fields)
    assert store.kind == backend_of(values)
    given = {
        name.removeprefix(prefix).lower(): value
        for name, value in values_of(values).get("settings", {}).items()
        if name.startswith(prefix)
    }
    expected = IdempotencySettings.model_validate(given).model_dump(include=set(given))
    assert store.model_dump(include=set(given)) == expected


@pytest.mark.parametrize(
    ("overrides", "ports"),
    [
        (shared_store("postgresql", "postgresql://pa@db.loyalty.svc/pa"), [5432]),
        (shared_store("postgresql", "postgres://pa@db-a:5433,db-b/pa"), [5433, 5432]),
        (shared_store("redis", "redis://cache.loyalty.svc/0"), [6379]),
        (shared_store("redis", "rediss://pa@[fd00::10]:6380/0"), [6380]),
        (
            {
                **shared_store("redis", "redis://cache:6379/0"),
                "networkPolicy.store.ports": "[7000, 7001]",
            },
            [7000, 7001],
        ),
    ],
)
def test_the_network_policy_opens_the_stores_port(
    helm: Path, overrides: dict[str, str], ports: list[int]
) -> None:
    """The store's egress rule opens networkPolicy.store.ports, or else each port the DSN
    names (every host of a PostgreSQL multi-host DSN), the store's default port for a host
    without one; it comes after DNS, Kafka and PAS, which stay as they were."""
    policy = one(render(helm, overrides={**overrides, "replicaCount": "4"}), "NetworkPolicy")
    rules = policy["spec"]["egress"]
    assert [r["ports"][0]["port"] for r in rules[:3]] == [53, 9092, 443]
    assert len(rules) == 4
    assert rules[3]["ports"] == [{"port": port, "protocol": "TCP"} for port in ports]


def test_without_a_password_secret_no_password_file_is_mounted(helm: Path) -> None:
    """A shared store whose Secret name is empty (a server that asks for no password) gets
    its DSN and no password file."""
    manifests = render(helm, overrides=shared_store("redis", "redis://cache:6379/0"))
    passed = settings_passed(manifests)
    assert "PA_IDEMPOTENCY__PASSWORD_FILE" not in passed
    volumes = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    (projected,) = [v["projected"] for v in volumes if v["name"] == "credentials"]
    paths = {s["secret"]["items"][0]["path"] for s in projected["sources"]}
    assert STORE_PASSWORD_FILE.name not in paths


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"idempotency.backend": '"postgresql"'},
            "idempotency.dsn is required with idempotency.backend postgresql",
        ),
        (
            {"idempotency.backend": '"redis"'},
            "idempotency.dsn is required with idempotency.backend redis",
        ),
        (
            shared_store("redis", "postgresql://pa@db:5432/pa"),
            "it has the scheme postgresql://, but the DSN of the idempotency.backend redis"
            " store starts with redis:// or rediss://",
        ),
        (
            shared_store("postgresql", "rediss://cache:6380/0"),
            "it has the scheme rediss://, but the DSN of the idempotency.backend postgresql"
            " store starts with postgresql:// or postgres://",
        ),
        (
            shared_store("postgresql", "sqlite:///var/idempotency.sqlite3"),
            "it has the scheme sqlite://",
        ),
        (shared_store("postgresql", "db.loyalty.svc:5432"), "it has no scheme"),
        (shared_store("postgresql", "postgresql://pa@/pa"), "it names no host"),
        (
            {"idempotency.dsn": '"postgresql://pa@db:5432/pa"'},
            "idempotency.dsn is refused with idempotency.backend sqlite",
        ),
        (
            {"idempotency.passwordSecret.name": '"points-adjuster-store"'},
            "idempotency.passwordSecret.name is refused with idempotency.backend sqlite",
        ),
    ],
)
def test_a_store_that_contradicts_itself_is_refused(
    helm: Path, overrides: dict[str, str], words: str
) -> None:
    """A shared store without a DSN, a DSN whose scheme names another store (or none) or no
    host, and a DSN or password Secret given to SQLite are refused, saying what to write."""
    error = refusal(helm, overrides=overrides)
    assert words in error


@pytest.mark.parametrize(
    ("backend", "dsn"),
    [
        ("postgresql", "postgresql://pa:s3cret-value@db:5432/pa"),
        ("postgresql", "postgres://pa:s3cret-value@db-a:5432,db-b:5432/pa"),
        ("postgresql", "postgresql://pa@db:5432/pa?sslmode=require&password=s3cret-value"),
        ("redis", "redis://:s3cret-value@cache:6379/0"),
        ("redis", "rediss://pa:s3cret-value@cache:6380/0"),
        ("redis", "redis://cache:6379/0?Password=s3cret-value"),
    ],
)
def test_a_dsn_with_a_password_is_refused_without_repeating_it(
    helm: Path, backend: str, dsn: str
) -> None:
    """A DSN carrying a password (user:password@ or a password parameter) is refused before
    it could reach a ConfigMap or the release record, pointing at idempotency.passwordSecret,
    and the message repeats neither the password nor the DSN."""
    error = refusal(helm, overrides=shared_store(backend, dsn))
    assert "idempotency.dsn is refused: it carries a password" in error
    assert "idempotency.passwordSecret" in error
    assert "PA_IDEMPOTENCY__PASSWORD_FILE" in error
    assert "s3cret-value" not in error


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_every_variable_the_chart_passes_is_a_real_setting(helm: Path, values: Path | None) -> None:
    """Each PA_* variable of the ConfigMap and the container is a field of
    service.settings.Settings, and the ConfigMap alone feeds the container's envFrom."""
    manifests = render(helm, values)
    passed = settings_passed(manifests)
    assert set(passed) - ALL_SETTINGS == set()
    name = one(manifests, "ConfigMap")["metadata"]["name"]
    assert container(manifests)["envFrom"] == [{"configMapRef": {"name": name}}]


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_the_settings_the_pod_needs_are_set_by_the_chart(helm: Path, values: Path | None) -> None:
    """The metrics endpoint listens beyond loopback on the probed port, the group instance id
    is the pod's name, and the SQLite file lies on the store's volume; a shared store is
    named by its DSN alone, with no volume (test_a_shared_store_runs_several_replicas)."""
    manifests = render(helm, values)
    passed = settings_passed(manifests)
    main = container(manifests)
    assert passed["PA_METRICS__ENABLED"] == "true"
    assert ipaddress.ip_address(passed["PA_METRICS__HOST"]).is_unspecified
    (port,) = main["ports"]
    assert (port["name"], str(port["containerPort"])) == ("metrics", passed["PA_METRICS__PORT"])
    assert passed["PA_KAFKA__GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    if backend_of(values) != "sqlite":
        assert passed["PA_IDEMPOTENCY__DSN"] == values_of(values)["idempotency"]["dsn"]
        assert "PA_IDEMPOTENCY__BACKEND" not in passed
        assert "PA_IDEMPOTENCY__SQLITE_PATH" not in passed
        return
    assert passed["PA_IDEMPOTENCY__BACKEND"] == "sqlite"
    assert "PA_IDEMPOTENCY__DSN" not in passed
    mounts = {mount["name"]: mount for mount in main["volumeMounts"]}
    sqlite = PurePosixPath(passed["PA_IDEMPOTENCY__SQLITE_PATH"])
    assert sqlite.parent == PurePosixPath(mounts["store"]["mountPath"])
    assert not mounts["store"].get("readOnly", False)
    statefulset = one(manifests, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "store"


def test_numbers_and_lists_reach_the_service_as_it_reads_them(helm: Path) -> None:
    """Whole numbers keep all their digits (no 6.7108864e+07), fractions stay fractions and
    lists are JSON, as pydantic-settings parses them."""
    data = one(render(helm, CHART / "ci" / "sqlite-single.yaml"), "ConfigMap")["data"]
    assert data["PA_PROCESSING__MAX_BUFFERED_BYTES"] == "67108864"
    assert data["PA_RECONCILIATION__SETTLE_S"] == "45.5"
    assert data["PA_PAS__ALLOWED_TYPE_CODES"] == '["GOODWILL","CORRECTION"]'
    assert data["PA_PROCESSING__ADAPTIVE_CONCURRENCY"] == "true"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("PA_METRICS__PORT", "the chart sets it from metrics.port"),
        ("PA_METRICS__HOST", "the chart sets it from metrics.host"),
        ("PA_WORKERS", "the chart sets it from workers"),
        ("PA_KAFKA__GROUP_INSTANCE_ID", "the chart sets it from the pod's name"),
        ("PA_IDEMPOTENCY__SQLITE_PATH", "the chart sets it from idempotency.sqlite"),
        ("PA_IDEMPOTENCY__DSN", "the chart sets it from idempotency.dsn"),
        ("PA_IDEMPOTENCY__PASSWORD_FILE", "the chart sets it from idempotency.passwordSecret"),
        ("PA_PAS__SIGNING_KEY_PATH", "the chart sets it from credentials.signingKey"),
        ("PA_PAS__CONSUMER_KEY_FILE", "the chart sets it from credentials.consumerKey"),
        ("PA_KAFKA__SECURITY_PROTOCOL", "the chart sets it from kafka.securityProtocol"),
        ("PA_KAFKA__SASL_USERNAME", "the chart sets it from kafka.sasl.username"),
        ("PA_KAFKA__SASL_PASSWORD_FILE", "the chart sets it from kafka.sasl.passwordSecret"),
        ("PA_KAFKA__SSL_CHECK_HOSTNAME", "the chart sets it from kafka.tls.checkHostname"),
        ("PA_KAFKA__SSL_KEY_FILE", "the chart sets it from kafka.tls.clientKeySecret"),
        ("PA_PAS__CLIENT_CERT_FILE", "the chart sets it from pasTls.clientCertificateSecret"),
        ("PA_SCHEMA_REGISTRY__URL", "the chart sets it from schemaRegistry.url"),
        (
            "PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE",
            "the chart sets it from schemaRegistry.bearerTokenSecret",
        ),
    ],
)
def test_a_setting_the_chart_computes_is_refused_in_the_settings_map(
    helm: Path, name: str, words: str
) -> None:
    """A variable the chart sets itself cannot be set twice: the refusal names the value to
    change instead."""
    error = refusal(helm, overrides={f"settings.{name}": '"x"'})
    assert f"settings.{name} is refused" in error
    assert words in error


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SECRET_SETTINGS))
def test_a_secret_setting_is_refused_in_the_values(helm: Path, name: str) -> None:
    """A secret given as a setting is refused before it could reach a ConfigMap or the
    release record, with where it belongs instead."""
    assert name in {
        "PA_PAS__CONSUMER_KEY",
        "PA_PAS__SIGNING_KEY_PASSWORD",
        "PA_PAS__DECRYPTION_KEY_PASSWORD",
    }
    error = refusal(helm, overrides={f"settings.{name}": '"s3cret-value"'})
    assert f"settings.{name} is refused: it is a secret" in error
    assert "s3cret-value" not in error


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_no_rendered_manifest_holds_a_secret_value(helm: Path, values: Path | None) -> None:
    """The chart renders no Secret, no key material and no secret setting: every credential is
    a file of a Secret the values name, mounted read-only, and its setting points at it."""
    text = _rendered(helm, values, ())
    assert "-----BEGIN" not in text
    assert "PRIVATE KEY" not in text
    manifests = render(helm, values)
    assert "Secret" not in {m["kind"] for m in manifests}
    passed = settings_passed(manifests)
    assert set(passed) & SECRET_SETTINGS == set()
    main = container(manifests)
    credentials = next(m for m in main["volumeMounts"] if m["name"] == "credentials")
    assert credentials["readOnly"] is True
    assert PurePosixPath(credentials["mountPath"]) == SECRETS_MOUNT
    volumes = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    (projected,) = [v["projected"] for v in volumes if v["name"] == "credentials"]
    files = {}
    for source in projected["sources"]:
        assert set(source) == {"secret"}, "only Secrets feed the credentials volume"
        (item,) = source["secret"]["items"]
        files[item["path"]] = source["secret"]["name"]
    pointing = {
        name: PurePosixPath(value)
        for name, value in passed.items()
        if (
            name.startswith(("PA_PAS__", "PA_KAFKA__", "PA_SCHEMA_REGISTRY__"))
            and name.endswith(("_FILE", "_PATH"))
        )
        or name == "PA_IDEMPOTENCY__PASSWORD_FILE"
    }
    assert {path.parent for path in pointing.values()} == {SECRETS_MOUNT}
    assert {path.name for path in pointing.values()} == set(files)
    for required in (
        "PA_PAS__CONSUMER_KEY_FILE",
        "PA_PAS__SIGNING_KEY_PATH",
        "PA_PAS__DECRYPTION_KEY_PATH",
        "PA_PAS__ENCRYPTION_CERTIFICATE_PATH",
    ):
        assert required in pointing
    if "PA_IDEMPOTENCY__DSN" in passed:  # the service refuses a DSN carrying a password
        IdempotencySettings(dsn=passed["PA_IDEMPOTENCY__DSN"])


def test_each_credential_comes_from_the_secret_its_entry_names(helm: Path) -> None:
    """An entry with a secretName reads that Secret; the others read existingSecret; optional
    files are mounted only when enabled."""

    def sources(manifests: list[Manifest]) -> dict[str, tuple[str, str]]:
        volumes = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
        (projected,) = [v["projected"] for v in volumes if v["name"] == "credentials"]
        return {
            s["secret"]["items"][0]["path"]: (s["secret"]["name"], s["secret"]["items"][0]["key"])
            for s in projected["sources"]
        }

    assert sources(render(helm)) == {
        "consumer-key": ("points-adjuster-pas", "consumer-key"),
        "signing-key": ("points-adjuster-pas", "signing-key.p12"),
        "signing-key-password": ("points-adjuster-pas", "signing-key-password"),
        "decryption-key": ("points-adjuster-pas", "decryption-key.pem"),
        "encryption-certificate": ("points-adjuster-pas", "encryption-certificate.pem"),
    }
    spelled_out = sources(render(helm, CHART / "ci" / "sqlite-single.yaml"))
    assert spelled_out["signing-key-password"] == ("points-adjuster-signing-password", "password")
    assert spelled_out["decryption-key-password"] == (
        "points-adjuster-decryption-password",
        "password",
    )
    assert spelled_out["decryption-key"] == ("points-adjuster-pas", "client-decryption.p12")
    assert spelled_out["decryption-certificate"] == (
        "points-adjuster-pas",
        "decryption-certificate.pem",
    )


# -- Kafka security, PAS TLS and the schema registry ----------------------------------------


def secret_ref(name: str, key: str) -> str:
    """A --set-json value naming `key` of the Secret `name`."""
    return f'{{"name": "{name}", "key": "{key}"}}'


def mounted_files(manifests: list[Manifest]) -> dict[str, tuple[str, str]]:
    """The credentials volume's files: file name -> (Secret, key)."""
    volumes = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    (projected,) = [v["projected"] for v in volumes if v["name"] == "credentials"]
    return {
        s["secret"]["items"][0]["path"]: (s["secret"]["name"], s["secret"]["items"][0]["key"])
        for s in projected["sources"]
    }


def group_fields(passed: dict[str, Any], group: str) -> dict[str, Any]:
    """The variables of one settings group as the field names of its model (those the
    ConfigMap holds: the group instance id comes from the downward API)."""
    prefix = env_name((group, ""))
    return {
        name.removeprefix(prefix).lower(): value
        for name, value in passed.items()
        if name.startswith(prefix) and isinstance(value, str)
    }


SECURE_KAFKA = CHART / "ci" / "secure-kafka.yaml"

SASL_SSL = {
    "kafka.securityProtocol": '"SASL_SSL"',
    "kafka.sasl.username": '"points-adjuster"',
    "kafka.sasl.passwordSecret": secret_ref("kafka-user", "password"),
    "kafka.tls.caSecret": secret_ref("kafka-ca", "ca.crt"),
}
KAFKA_MTLS = {
    "kafka.securityProtocol": '"SSL"',
    "kafka.tls.checkHostname": "false",
    "kafka.tls.clientCertificateSecret": secret_ref("kafka-client", "tls.crt"),
    "kafka.tls.clientKeySecret": secret_ref("kafka-client", "tls.key"),
    "kafka.tls.keyPasswordSecret": secret_ref("kafka-client-key", "password"),
}
PAS_MTLS = {
    "pasTls.caSecret": secret_ref("pas-ca", "ca.pem"),
    "pasTls.clientCertificateSecret": secret_ref("pas-mtls", "tls.crt"),
    "pasTls.clientKeySecret": secret_ref("pas-mtls", "tls.key"),
}
REGISTRY_BASIC = {
    "schemaRegistry.url": '"https://registry.schemas.svc/apis/ccompat/v7"',
    "schemaRegistry.username": '"points-adjuster"',
    "schemaRegistry.passwordSecret": secret_ref("registry-user", "password"),
    "schemaRegistry.caSecret": secret_ref("registry-ca", "ca.crt"),
}
REGISTRY_BEARER = {
    "schemaRegistry.url": '"http://registry:8081"',
    "schemaRegistry.bearerTokenSecret": secret_ref("registry-token", "token"),
}


@pytest.mark.parametrize(
    ("overrides", "files", "plain"),
    [
        (
            SASL_SSL,
            {
                "PA_KAFKA__SASL_PASSWORD_FILE": ("kafka-user", "password"),
                "PA_KAFKA__SSL_CA_FILE": ("kafka-ca", "ca.crt"),
            },
            {
                "PA_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "PA_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
                "PA_KAFKA__SASL_USERNAME": "points-adjuster",
                "PA_KAFKA__SSL_CHECK_HOSTNAME": "true",
            },
        ),
        (
            {
                "kafka.securityProtocol": '"SASL_PLAINTEXT"',
                "kafka.sasl.mechanism": '"SCRAM-SHA-256"',
                "kafka.sasl.username": '"pa"',
                "kafka.sasl.passwordSecret": secret_ref("kafka-user", "pw"),
            },
            {"PA_KAFKA__SASL_PASSWORD_FILE": ("kafka-user", "pw")},
            {
                "PA_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "PA_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
                "PA_KAFKA__SASL_USERNAME": "pa",
            },
        ),
        (
            KAFKA_MTLS,
            {
                "PA_KAFKA__SSL_CERT_FILE": ("kafka-client", "tls.crt"),
                "PA_KAFKA__SSL_KEY_FILE": ("kafka-client", "tls.key"),
                "PA_KAFKA__SSL_KEY_PASSWORD_FILE": ("kafka-client-key", "password"),
            },
            {"PA_KAFKA__SECURITY_PROTOCOL": "SSL", "PA_KAFKA__SSL_CHECK_HOSTNAME": "false"},
        ),
        (
            PAS_MTLS,
            {
                "PA_PAS__CA_FILE": ("pas-ca", "ca.pem"),
                "PA_PAS__CLIENT_CERT_FILE": ("pas-mtls", "tls.crt"),
                "PA_PAS__CLIENT_KEY_FILE": ("pas-mtls", "tls.key"),
            },
            {"PA_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"},
        ),
        (
            {**PAS_MTLS, "pasTls.keyPasswordSecret": secret_ref("pas-mtls-key", "password")},
            {
                "PA_PAS__CA_FILE": ("pas-ca", "ca.pem"),
                "PA_PAS__CLIENT_CERT_FILE": ("pas-mtls", "tls.crt"),
                "PA_PAS__CLIENT_KEY_FILE": ("pas-mtls", "tls.key"),
                "PA_PAS__CLIENT_KEY_PASSWORD_FILE": ("pas-mtls-key", "password"),
            },
            {},
        ),
        (
            REGISTRY_BASIC,
            {
                "PA_SCHEMA_REGISTRY__PASSWORD_FILE": ("registry-user", "password"),
                "PA_SCHEMA_REGISTRY__CA_FILE": ("registry-ca", "ca.crt"),
            },
            {
                "PA_SCHEMA_REGISTRY__URL": "https://registry.schemas.svc/apis/ccompat/v7",
                "PA_SCHEMA_REGISTRY__USERNAME": "points-adjuster",
            },
        ),
        (
            REGISTRY_BEARER,
            {"PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE": ("registry-token", "token")},
            {"PA_SCHEMA_REGISTRY__URL": "http://registry:8081"},
        ),
        (
            {**SASL_SSL, **KAFKA_MTLS, "kafka.securityProtocol": '"SASL_SSL"', **PAS_MTLS},
            {
                "PA_KAFKA__SASL_PASSWORD_FILE": ("kafka-user", "password"),
                "PA_KAFKA__SSL_CA_FILE": ("kafka-ca", "ca.crt"),
                "PA_KAFKA__SSL_CERT_FILE": ("kafka-client", "tls.crt"),
                "PA_KAFKA__SSL_KEY_FILE": ("kafka-client", "tls.key"),
                "PA_KAFKA__SSL_KEY_PASSWORD_FILE": ("kafka-client-key", "password"),
                "PA_PAS__CA_FILE": ("pas-ca", "ca.pem"),
                "PA_PAS__CLIENT_CERT_FILE": ("pas-mtls", "tls.crt"),
                "PA_PAS__CLIENT_KEY_FILE": ("pas-mtls", "tls.key"),
            },
            {
                "PA_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "PA_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
                "PA_KAFKA__SASL_USERNAME": "points-adjuster",
                "PA_KAFKA__SSL_CHECK_HOSTNAME": "false",
            },
        ),
    ],
    ids=[
        "kafka-sasl-ssl",
        "kafka-sasl-plaintext",
        "kafka-mtls",
        "pas-mtls",
        "pas-mtls-key-password",
        "registry-basic",
        "registry-bearer",
        "kafka-and-pas-everything",
    ],
)
def test_each_security_file_is_mounted_from_its_secret_and_its_setting_points_at_it(
    helm: Path,
    overrides: dict[str, str],
    files: dict[str, tuple[str, str]],
    plain: dict[str, str],
) -> None:
    """Each Secret the security values name is mounted read-only in the credentials volume
    under a fixed file name, its setting points at that file, the plain values reach the
    ConfigMap, nothing else of Kafka's, PAS's TLS or the registry's is set, and what the pod
    gets loads as the service's Kafka, PAS and registry settings."""
    manifests = render(helm, overrides=overrides)
    passed = settings_passed(manifests)
    mounted = mounted_files(manifests)
    for setting, (secret, key) in files.items():
        path = PurePosixPath(passed[setting])
        assert path.parent == SECRETS_MOUNT, setting
        assert mounted[path.name] == (secret, key), setting
    security = {
        name
        for name in passed
        if name.startswith(("PA_KAFKA__SASL", "PA_KAFKA__SSL", "PA_SCHEMA_REGISTRY__"))
        or name in {"PA_PAS__CA_FILE"}
        or name.startswith("PA_PAS__CLIENT_")
    }
    assert security == (set(files) | set(plain)) - {"PA_KAFKA__SECURITY_PROTOCOL"}
    for setting, value in plain.items():
        assert passed[setting] == value, setting
    default_files = set(mounted_files(render(helm)))
    assert set(mounted) - default_files == {
        PurePosixPath(passed[setting]).name for setting in files
    }
    KafkaSettings.model_validate(group_fields(passed, "kafka"))
    PasSettings.model_validate(group_fields(passed, "pas"))
    SchemaRegistrySettings.model_validate(group_fields(passed, "schema_registry"))


def test_by_default_kafka_is_plaintext_and_no_security_file_is_mounted(helm: Path) -> None:
    """Without security values the chart says PLAINTEXT, mounts the PAS credentials only and
    names no registry."""
    manifests = render(helm)
    passed = settings_passed(manifests)
    assert passed["PA_KAFKA__SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not [n for n in passed if n.startswith(("PA_KAFKA__SASL", "PA_KAFKA__SSL"))]
    assert not [n for n in passed if n.startswith("PA_SCHEMA_REGISTRY__")]
    assert not [n for n in passed if n.startswith(("PA_PAS__CA", "PA_PAS__CLIENT"))]
    assert not {f for f in mounted_files(manifests) if f.startswith(("kafka-", "pas-", "schema-"))}


def test_the_secure_example_reaches_the_service_as_it_reads_it(helm: Path) -> None:
    """ci/secure-kafka.yaml (SASL_SSL with a CA and a client certificate, PAS mTLS, a
    registry with a bearer token) passes settings the service accepts, each file from the
    Secret the example names."""
    manifests = render(helm, SECURE_KAFKA)
    passed = settings_passed(manifests)
    kafka = KafkaSettings.model_validate(group_fields(passed, "kafka"))
    assert kafka.security_protocol == "SASL_SSL"
    assert kafka.ssl_cert_file == Path(SECRETS_MOUNT / "kafka-client-certificate")
    assert kafka.ssl_key_file == Path(SECRETS_MOUNT / "kafka-client-key")
    pas = PasSettings.model_validate(group_fields(passed, "pas"))
    assert pas.client_cert_file == Path(SECRETS_MOUNT / "pas-client-certificate")
    assert pas.client_key_password_file == Path(SECRETS_MOUNT / "pas-client-key-password")
    registry = SchemaRegistrySettings.model_validate(group_fields(passed, "schema_registry"))
    assert registry.bearer_token_file == Path(SECRETS_MOUNT / "schema-registry-bearer-token")
    assert registry.url == values_of(SECURE_KAFKA)["schemaRegistry"]["url"]
    values = values_of(SECURE_KAFKA)
    mounted = mounted_files(manifests)
    assert mounted["kafka-sasl-password"] == (
        values["kafka"]["sasl"]["passwordSecret"]["name"],
        values["kafka"]["sasl"]["passwordSecret"]["key"],
    )
    assert (
        mounted["schema-registry-bearer-token"][0]
        == (values["schemaRegistry"]["bearerTokenSecret"]["name"])
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"kafka.securityProtocol": '"SASL_SSL"', "kafka.sasl.username": '"pa"'},
            "kafka.sasl.passwordSecret.name is required with kafka.securityProtocol SASL_SSL",
        ),
        (
            {
                "kafka.securityProtocol": '"SASL_PLAINTEXT"',
                "kafka.sasl.passwordSecret": secret_ref("kafka-user", "password"),
            },
            "kafka.sasl.username is required with kafka.securityProtocol SASL_PLAINTEXT",
        ),
        (
            {"kafka.sasl.username": '"pa"'},
            "kafka.sasl is refused with kafka.securityProtocol PLAINTEXT",
        ),
        (
            {"kafka.securityProtocol": '"SSL"', "kafka.sasl.passwordSecret": secret_ref("k", "p")},
            "kafka.sasl is refused with kafka.securityProtocol SSL",
        ),
        (
            {"kafka.tls.caSecret": secret_ref("kafka-ca", "ca.crt")},
            "kafka.tls.caSecret.name is refused with kafka.securityProtocol PLAINTEXT",
        ),
        (
            {
                **SASL_SSL,
                "kafka.securityProtocol": '"SASL_PLAINTEXT"',
            },
            "kafka.tls.caSecret.name is refused with kafka.securityProtocol SASL_PLAINTEXT",
        ),
        (
            {"kafka.tls.checkHostname": "false"},
            "kafka.tls.checkHostname false is refused with kafka.securityProtocol PLAINTEXT",
        ),
        (
            {
                "kafka.securityProtocol": '"SSL"',
                "kafka.tls.clientCertificateSecret": secret_ref("kafka-client", "tls.crt"),
            },
            "kafka.tls.clientCertificateSecret.name is set without kafka.tls.clientKeySecret.name",
        ),
        (
            {
                "kafka.securityProtocol": '"SSL"',
                "kafka.tls.clientKeySecret": secret_ref("kafka-client", "tls.key"),
            },
            "kafka.tls.clientKeySecret.name is set without kafka.tls.clientCertificateSecret.name",
        ),
        (
            {
                "kafka.securityProtocol": '"SSL"',
                "kafka.tls.keyPasswordSecret": secret_ref("kafka-client-key", "password"),
            },
            "kafka.tls.keyPasswordSecret.name is set without kafka.tls.clientKeySecret.name",
        ),
        (
            {"pasTls.clientCertificateSecret": secret_ref("pas-mtls", "tls.crt")},
            "pasTls.clientCertificateSecret.name is set without pasTls.clientKeySecret.name",
        ),
        (
            {"pasTls.keyPasswordSecret": secret_ref("pas-mtls-key", "password")},
            "pasTls.keyPasswordSecret.name is set without pasTls.clientKeySecret.name",
        ),
        (
            {"schemaRegistry.username": '"pa"'},
            "schemaRegistry.username is refused without schemaRegistry.url",
        ),
        (
            {"schemaRegistry.bearerTokenSecret": secret_ref("registry-token", "token")},
            "schemaRegistry.bearerTokenSecret is refused without schemaRegistry.url",
        ),
        (
            {"settings.PA_KAFKA__OUTCOME_FRAMING": '"confluent"'},
            "schemaRegistry.url is required with settings.PA_KAFKA__OUTCOME_FRAMING confluent",
        ),
        (
            {**REGISTRY_BASIC, "schemaRegistry.passwordSecret": secret_ref("", "password")},
            "schemaRegistry.passwordSecret.name is required with schemaRegistry.username",
        ),
        (
            {**REGISTRY_BEARER, "schemaRegistry.passwordSecret": secret_ref("r", "password")},
            "schemaRegistry.username is required with schemaRegistry.passwordSecret.name",
        ),
        (
            {**REGISTRY_BASIC, "schemaRegistry.bearerTokenSecret": secret_ref("t", "token")},
            "schemaRegistry.bearerTokenSecret.name is refused with schemaRegistry.username",
        ),
        (
            {**REGISTRY_BEARER, "schemaRegistry.caSecret": secret_ref("registry-ca", "ca.crt")},
            "schemaRegistry.caSecret.name is refused with an http:// schemaRegistry.url",
        ),
        (
            {"schemaRegistry.url": '"registry:8081"'},
            "schemaRegistry.url is refused: it starts neither with http:// nor with https://",
        ),
        (
            {"schemaRegistry.url": '"https:///apis/ccompat/v7"'},
            "schemaRegistry.url is refused: it names no host",
        ),
    ],
)
def test_inconsistent_security_values_are_refused_saying_why(
    helm: Path, overrides: dict[str, str], words: str
) -> None:
    """SASL without its user or password Secret (or SASL values without SASL), TLS files
    without TLS, a client certificate without its key (or a key or key password without
    it), registry values without a URL, half of basic auth, basic and bearer auth together,
    a CA for an http:// registry and a URL that is not one are refused, naming the values."""
    assert words in refusal(helm, overrides=overrides)


@pytest.mark.parametrize(
    "url",
    [
        "https://pa:s3cret-value@registry:8081",
        "http://:s3cret-value@registry/apis/ccompat/v7",
        "https://s3cret-value@registry",
    ],
)
def test_a_registry_url_with_credentials_is_refused_without_repeating_it(
    helm: Path, url: str
) -> None:
    """A registry URL carrying a user or password is refused before it could reach a
    ConfigMap, pointing at schemaRegistry.username and passwordSecret, and the message
    repeats neither the password nor the URL."""
    error = refusal(helm, overrides={"schemaRegistry.url": f'"{url}"'})
    assert "schemaRegistry.url is refused: it carries credentials" in error
    assert "schemaRegistry.passwordSecret" in error
    assert "s3cret-value" not in error


@pytest.mark.parametrize(
    ("overrides", "ports"),
    [
        ({"schemaRegistry.url": '"https://registry.schemas.svc/apis/ccompat/v7"'}, [443]),
        ({"schemaRegistry.url": '"http://registry:8081"'}, [8081]),
        ({"schemaRegistry.url": '"http://registry.schemas.svc"'}, [80]),
        ({"schemaRegistry.url": '"https://[fd00::20]:8443/"'}, [8443]),
        (
            {
                "schemaRegistry.url": '"https://registry"',
                "networkPolicy.schemaRegistry.ports": "[8443, 9443]",
            },
            [8443, 9443],
        ),
    ],
)
def test_the_network_policy_opens_the_registrys_port(
    helm: Path, overrides: dict[str, str], ports: list[int]
) -> None:
    """With a registry the NetworkPolicy gains one egress rule after DNS, Kafka and PAS:
    networkPolicy.schemaRegistry.ports, or the port of the URL (443 or 80 by its scheme
    when it names none), to networkPolicy.schemaRegistry.to."""
    rules = one(render(helm, overrides=overrides), "NetworkPolicy")["spec"]["egress"]
    assert [r["ports"][0]["port"] for r in rules[:3]] == [53, 9092, 443]
    assert len(rules) == 4
    assert rules[3]["ports"] == [{"port": port, "protocol": "TCP"} for port in ports]
    assert "to" not in rules[3]
    narrowed = {
        **overrides,
        "networkPolicy.schemaRegistry.to": '[{"ipBlock": {"cidr": "10.40.0.0/16"}}]',
    }
    rules = one(render(helm, overrides=narrowed), "NetworkPolicy")["spec"]["egress"]
    assert rules[3]["to"] == [{"ipBlock": {"cidr": "10.40.0.0/16"}}]


# -- the pod ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_the_pod_runs_restricted(helm: Path, values: Path | None) -> None:
    """Non-root as the image's user 10001, read-only root with an emptyDir as TMPDIR, no
    privilege escalation, no capabilities, the runtime's seccomp profile, no API token."""
    manifests = render(helm, values)
    pod = one(manifests, "StatefulSet")["spec"]["template"]["spec"]
    main = container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = main["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    (tmpdir,) = [entry["value"] for entry in main["env"] if entry["name"] == "TMPDIR"]
    (tmp,) = [m for m in main["volumeMounts"] if m["mountPath"] == tmpdir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


@pytest.mark.parametrize("values", VALUES_FILES, ids=VALUES_IDS)
def test_the_probes_ask_the_service_on_its_metrics_port(helm: Path, values: Path | None) -> None:
    """Liveness and start-up ask /healthz, readiness asks /readyz, all on the metrics port."""
    main = container(render(helm, values))
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert main[probe]["httpGet"] == {"path": path, "port": "metrics"}


def test_a_stable_pod_name_is_the_static_membership(helm: Path) -> None:
    """The workload is a StatefulSet (stable pod names, one pod at a time on update) whose
    volume claims outlive the release."""
    statefulset = one(render(helm), "StatefulSet")
    assert statefulset["spec"]["podManagementPolicy"] == "OrderedReady"
    assert statefulset["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    service = one(render(helm), "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_the_operations_page_still_gives_the_drain_margin() -> None:
    """The broker-gone margin the grace period adds is the one docs/operations.md states."""
    text = " ".join(OPERATIONS_PAGE.read_text(encoding="utf-8").split())
    assert f"about {BROKER_GONE_MARGIN_S} s after that budget at most" in text


def grace_seconds(helm: Path, overrides: dict[str, str]) -> int:
    pod = one(render(helm, overrides=overrides), "StatefulSet")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert isinstance(grace, int)
    return grace


@pytest.mark.parametrize("timeout", ["0.5", "1", "19.99", "20", "20.01", "45.5", '"75"', "600"])
@pytest.mark.parametrize("slack", [1, 8])
def test_the_grace_period_always_exceeds_the_drain_and_its_margin(
    helm: Path, timeout: str, slack: int
) -> None:
    """terminationGracePeriodSeconds is above PA_SHUTDOWN_TIMEOUT_S plus the broker-gone
    margin, whatever the timeout (fractions, strings) and the slack, so the kubelet's SIGKILL
    never cuts a drain short."""
    grace = grace_seconds(
        helm,
        {"settings.PA_SHUTDOWN_TIMEOUT_S": timeout, "terminationGrace.slackSeconds": str(slack)},
    )
    budget = float(timeout.strip('"'))
    assert grace > budget + BROKER_GONE_MARGIN_S
    assert grace == math.ceil(budget) + BROKER_GONE_MARGIN_S + slack


def test_the_default_grace_period_covers_the_default_drain(helm: Path) -> None:
    """With the defaults (20 s of drain, no setting given at all) the pod gets 40 s."""
    assert grace_seconds(helm, {}) == 40
    assert grace_seconds(helm, {"settings.PA_SHUTDOWN_TIMEOUT_S": "null"}) == 40


@pytest.mark.parametrize("startup", ["5", "20", "30.5", '"60"'])
def test_the_startup_window_covers_the_kafka_startups(helm: Path, startup: str) -> None:
    """The startupProbe lets four Kafka client start-ups of PA_KAFKA__STARTUP_TIMEOUT_S each,
    plus 30 s, pass before liveness takes over."""
    probe = container(render(helm, overrides={"settings.PA_KAFKA__STARTUP_TIMEOUT_S": startup}))[
        "startupProbe"
    ]
    window = probe["periodSeconds"] * probe["failureThreshold"]
    assert window >= 4 * float(startup.strip('"')) + 30


def test_the_resources_fit_the_measured_footprint(helm: Path) -> None:
    """The memory request covers the measured peak RSS (110 MB) and the limit leaves room for
    the fetched-record budget on top of it."""
    resources = container(render(helm))["resources"]
    mebibytes = {"Mi": 1, "Gi": 1024}

    def size(quantity: str) -> float:
        return float(quantity[:-2]) * mebibytes[quantity[-2:]]

    assert size(resources["requests"]["memory"]) * 1.048576 >= 110
    assert size(resources["limits"]["memory"]) >= size(resources["requests"]["memory"]) + 192


def test_workers_reach_the_service_and_multiply_the_resources(helm: Path) -> None:
    """``workers`` is PA_WORKERS (1 by default, resources as given); with 3, every CPU and
    memory request and limit is three times the per-worker value."""
    assert settings_passed(render(helm))["PA_WORKERS"] == "1"
    manifests = render(helm, overrides={"workers": "3"})
    assert settings_passed(manifests)["PA_WORKERS"] == "3"
    assert container(manifests)["resources"] == {
        "requests": {"cpu": "750m", "memory": "480Mi"},
        "limits": {"cpu": "3000m", "memory": "1152Mi"},
    }
    kubernetes_validate.validate(one(manifests, "StatefulSet"), KUBERNETES_VERSION, strict=True)
    error = refusal(
        helm, overrides={"workers": "2", "resources": '{"requests": {"memory": "1.5Gi"}}'}
    )
    assert "resources.requests.memory: 1.5Gi cannot be multiplied by workers (2)" in error


def test_the_disruption_budget_lets_a_drain_move_the_one_pod(helm: Path) -> None:
    """With one replica the budget allows its eviction (minAvailable 1 would block drains)."""
    budget = one(render(helm), "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget


def test_the_network_policy_allows_only_dns_kafka_pas_and_the_metrics_port(helm: Path) -> None:
    """By default ingress reaches only the metrics port and egress only DNS, the Kafka and
    the PAS ports; narrowed values add their peers to the same rules."""
    policy = one(render(helm), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    egress_ports = [
        sorted((port["port"], port["protocol"]) for port in rule["ports"])
        for rule in policy["egress"]
    ]
    assert egress_ports == [[(53, "TCP"), (53, "UDP")], [(9092, "TCP")], [(443, "TCP")]]
    narrowed = one(render(helm, CHART / "ci" / "sqlite-single.yaml"), "NetworkPolicy")["spec"]
    assert all("to" in rule for rule in narrowed["egress"])
    assert "from" in narrowed["ingress"][0]
    assert "NetworkPolicy" not in {m["kind"] for m in render(helm, CHART / "ci" / "minimal.yaml")}


def test_there_is_no_autoscaler(helm: Path) -> None:
    """Neither an HPA nor a KEDA ScaledObject is rendered, whatever the values file: SQLite
    allows one replica, and on a shared store more replicas than the command topic has
    partitions would stand idle, so the count is chosen, not scaled."""
    for values in VALUES_FILES:
        kinds = {m["kind"] for m in render(helm, values)}
        assert kinds & {"HorizontalPodAutoscaler", "ScaledObject"} == set()


# -- Prometheus Operator resources -----------------------------------------------------------


def test_monitoring_is_off_by_default(helm: Path) -> None:
    """Without the Prometheus Operator's CRDs the defaults install: no ServiceMonitor, no rule."""
    kinds = {(m["apiVersion"], m["kind"]) for m in render(helm)}
    assert kinds & OPERATOR_KINDS == set()


def test_the_service_monitor_scrapes_the_metrics_port_of_this_release(helm: Path) -> None:
    """The ServiceMonitor selects the chart's Service by labels it carries, in its namespace,
    on the named metrics port, with valid durations and the labels Prometheus selects by."""
    manifests = render(helm, CHART / "ci" / "monitoring.yaml")
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for duration in (endpoint["interval"], endpoint["scrapeTimeout"]):
        assert DURATION.match(duration)


def test_the_alert_rules_are_the_repositorys_scoped_to_this_release(helm: Path) -> None:
    """The PrometheusRule holds exactly the rules of deploy/prometheus/alerts.yml, each
    selector scoped to this release's job and namespace instead of the compose job, each
    runbook_url made absolute by runbookBaseUrl; everything else unchanged."""
    manifests = render(helm, CHART / "ci" / "monitoring.yaml")
    rule = one(manifests, "PrometheusRule")
    service = one(manifests, "Service")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    base = yaml.safe_load((CHART / "ci" / "monitoring.yaml").read_text("utf-8"))["prometheusRule"][
        "runbookBaseUrl"
    ].rstrip("/")
    scope = f'job="{service["metadata"]["name"]}", namespace="{NAMESPACE}"'
    source = yaml.safe_load(observability.RULES.read_text("utf-8"))
    (group,) = rule["spec"]["groups"]
    (source_group,) = source["groups"]
    assert group["name"] == source_group["name"]
    rendered = {entry["alert"]: entry for entry in group["rules"]}
    expected = {entry["alert"]: entry for entry in source_group["rules"]}
    assert set(rendered) == set(expected)
    exported = observability.exported_metric_names() | {"up"}
    for name, entry in rendered.items():
        original = expected[name]
        compose_job = observability.SCRAPE_JOB
        assert entry["expr"].count(scope) == original["expr"].count(compose_job) > 0, name
        assert entry["expr"] == original["expr"].replace(compose_job, scope), name
        assert set(re.findall(r"points_adjuster_\w+", entry["expr"])) <= exported, name
        assert entry.get("for") == original.get("for"), name
        assert DURATION.match(entry.get("for", "0s")), name
        assert entry["labels"] == original["labels"], name
        annotations = dict(original["annotations"])
        annotations["runbook_url"] = f"{base}/{annotations['runbook_url']}"
        assert entry["annotations"] == annotations, name
    assert rendered["ServiceNotReady"]["for"] == "5m"


def test_without_a_base_url_the_runbook_links_stay_repository_paths(helm: Path) -> None:
    """With runbookBaseUrl empty (the default) each runbook_url is docs/runbooks.md#<alert>."""
    manifests = render(helm, overrides={"prometheusRule.enabled": "true"})
    (group,) = one(manifests, "PrometheusRule")["spec"]["groups"]
    for entry in group["rules"]:
        assert entry["annotations"]["runbook_url"] == f"docs/runbooks.md#{entry['alert'].lower()}"


def release_series(text: str, job: str) -> str:
    """A promtool series written for the compose job, moved to this release's job and
    namespace."""
    return text.replace(observability.SCRAPE_JOB, f'job="{job}", namespace="{NAMESPACE}"')


def test_the_rendered_rules_pass_promtool_and_the_repositorys_unit_tests(
    helm: Path, tmp_path: Path
) -> None:
    """Where Prometheus' promtool is installed, the rendered rules parse and pass every unit
    test of deploy/prometheus/alerts_test.yml, moved to this release's job and namespace: each
    alert fires and resolves in the cluster exactly as in the compose stack."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (make prometheus-tools installs Debian's prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    manifests = render(helm, CHART / "ci" / "monitoring.yaml")
    groups = one(manifests, "PrometheusRule")["spec"]["groups"]
    job = one(manifests, "Service")["metadata"]["name"]
    rules = {entry["alert"]: entry for entry in groups[0]["rules"]}
    tests = yaml.safe_load(observability.RULE_TESTS.read_text("utf-8"))
    tests["rule_files"] = ["rules.yaml"]
    for test in tests["tests"]:
        for series in test["input_series"]:
            series["series"] = release_series(series["series"], job)
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                labels = alert["exp_labels"]
                assert labels["job"] == "points-adjuster"
                labels.update(job=job, namespace=NAMESPACE)
                url = rules[case["alertname"]]["annotations"]["runbook_url"]
                alert["exp_annotations"]["runbook_url"] = url
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "tests.yaml"]):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


# -- NOTES -----------------------------------------------------------------------------------


def notes(helm: Path, tmp_path: Path, values: Path | None = None) -> str:
    """The NOTES text a release of the chart prints with ``values``."""
    # `helm template` leaves NOTES.txt out, and `helm install --dry-run` wants a cluster: a
    # copy of the chart renders it as the value of a ConfigMap instead.
    chart = tmp_path / "points-adjuster"
    shutil.copytree(CHART, chart)
    text = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "notes" -}}' + text + "{{- end -}}", encoding="utf-8"
    )
    (chart / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes" . | toJson }}\n',
        encoding="utf-8",
    )
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--show-only",
        "templates/notes.yaml",
        *values_args(values, None),
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["data"]["notes"]
    assert isinstance(rendered, str)
    return rendered


def test_the_notes_say_what_to_check_after_installing(helm: Path, tmp_path: Path) -> None:
    """NOTES.txt names the pod, how to watch it become ready, how to read /readyz's reasons,
    how to check and create the topics, and where the logs are."""
    text = notes(helm, tmp_path)
    for needed in (
        f"kubectl -n {NAMESPACE} rollout status statefulset/pa-points-adjuster",
        f"kubectl -n {NAMESPACE} port-forward pod/pa-points-adjuster-0 9464:9464",
        "/readyz",
        "points-adjuster check",
        '"args":["topics","--partitions","12"]',
        f"kubectl -n {NAMESPACE} logs -f pa-points-adjuster-0",
        "Never scale past 1 replica on SQLite",
        "no autoscaler",
    ):
        assert needed in text, needed


def test_the_notes_of_a_shared_store_name_it_and_the_replica_limit(
    helm: Path, tmp_path: Path
) -> None:
    """With several replicas on PostgreSQL the NOTES name the replicas and the store, say that
    replicas beyond the command topic's partitions stand idle, list the store's port among
    the allowed egress, and say nothing of SQLite's volume."""
    text = " ".join(notes(helm, tmp_path, POSTGRES_THREE).split())
    for needed in (
        "(3 replicas sharing the postgresql idempotency store of idempotency.dsn)",
        "Replicas beyond the command topic's partition count stand idle",
        "no autoscaler",
        "the idempotency store (ports 5432)",
    ):
        assert needed in text, needed
    assert "SQLite" not in text


def test_the_notes_mount_the_kafka_files_in_the_one_off_topics_pod(
    helm: Path, tmp_path: Path
) -> None:
    """With Kafka security the one-off pod that creates the topics gets the Kafka files the
    ConfigMap's settings point at (and only those), mounted where the service has them; the
    registry's port is listed among the allowed egress."""
    text = notes(helm, tmp_path, SECURE_KAFKA)
    (overrides,) = re.findall(r"--overrides='([^']*)'", text)
    spec = yaml.safe_load(overrides)["spec"]
    (volume,) = spec["volumes"]
    paths = {source["secret"]["items"][0]["path"] for source in volume["projected"]["sources"]}
    assert paths == {
        "kafka-sasl-password",
        "kafka-ca",
        "kafka-client-certificate",
        "kafka-client-key",
    }
    (topics,) = spec["containers"]
    assert topics["args"] == ["topics", "--partitions", "12"]
    assert topics["volumeMounts"] == [
        {"name": volume["name"], "mountPath": str(SECRETS_MOUNT), "readOnly": True}
    ]
    assert "the schema registry (ports 8443)" in " ".join(text.split())
    plain = yaml.safe_load(re.findall(r"--overrides='([^']*)'", notes(helm, tmp_path / "d"))[0])
    assert "volumes" not in plain["spec"]
