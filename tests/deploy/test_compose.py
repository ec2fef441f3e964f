"""deploy/compose.yaml is consistent with itself, the settings, the Dockerfile and the dev kit.

No Docker engine runs on the project's machines, so the stack is never started here: these
tests read the file (and the Prometheus configuration it mounts) and check that every name,
port, path and setting in it points at something that exists and agrees, and that no secret
is written in it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from pa_devkit.cli import build_parser as build_devkit_parser
from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.jars import KAFKA_VERSION
from pa_devkit.sandbox.cli_args import DEFAULT_PORT as SANDBOX_DEFAULT_PORT
from service.cli import build_parser
from service.settings import Settings, env_name, load_settings
from tests.deploy.test_dockerfile import SECRET_NAME, product_workdir, stages
from tests.e2e.test_wheel import PASSWORD_FILE

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCS_PAGE = ROOT / "docs" / "image-and-compose.md"

SHUTDOWN_EXTRA_S = 12.0
"""What stopping takes beyond PA_SHUTDOWN_TIMEOUT_S at most: the final commit and closing the
Kafka clients with the broker gone, plus a commit already under way (docs/settings.md)."""

INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_]\w*)(?P<default>:?-[^}]*)?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)
SECRET_FLAGS = {"--consumer-key", "--p12-password", "--password"}
KEY_MATERIAL = re.compile(r"-----BEGIN|PRIVATE KEY")
RANDOM_TOKEN = re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{24,}")


# --- reading the file -------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text("utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def interpolate(text: str) -> str:
    """The text as compose reads it with no variable set: `$$` is a `$`, `${X:-d}` is d."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        default = match.group("default") or ""
        return default.lstrip(":").removeprefix("-")

    return INTERPOLATION.sub(replace, text)


def variables(text: str) -> Iterator[tuple[str, bool]]:
    """The variables a text interpolates, each with whether it has a default."""
    for match in INTERPOLATION.finditer(text):
        if name := match.group("braced") or match.group("bare"):
            yield name, match.group("default") is not None


def environment(service: str) -> dict[str, str]:
    """A service's environment, interpolated (either of compose's two ways to write it)."""
    raw = services()[service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {str(name): interpolate(str(value)) for name, value in raw.items()}


def command(service: str) -> list[str]:
    """A service's command, interpolated, as words."""
    raw = services()[service].get("command") or []
    words = shlex.split(raw) if isinstance(raw, str) else [str(word) for word in raw]
    return [interpolate(word) for word in words]


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    """The value after ``name`` in a command's words."""
    return words[words.index(name) + 1] if name in words else default


@dataclass(frozen=True)
class Mount:
    source: str
    target: PurePosixPath
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith((".", "/", "~"))


def mounts(service: str) -> list[Mount]:
    """A service's volumes (short or long syntax)."""
    found: list[Mount] = []
    for entry in services()[service].get("volumes") or []:
        if isinstance(entry, dict):
            found.append(
                Mount(
                    str(entry["source"]),
                    PurePosixPath(entry["target"]),
                    bool(entry.get("read_only")),
                )
            )
        else:
            source, target, *mode = str(entry).split(":")
            found.append(Mount(source, PurePosixPath(target), "ro" in mode))
    return found


def mount_under(service: str, path: PurePosixPath) -> Mount | None:
    """The mount of a service that holds ``path``, if any."""
    return next((m for m in mounts(service) if path.is_relative_to(m.target)), None)


def depends_on(service: str) -> dict[str, str]:
    """What a service waits for, each with its condition."""
    raw = services()[service].get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def build_target(service: str) -> str | None:
    build = services()[service].get("build")
    return build.get("target") if isinstance(build, dict) else None


def services_of(target: str) -> list[str]:
    return [name for name in services() if build_target(name) == target]


def the_service() -> str:
    """The compose service running `points-adjuster run` (the product with its CMD)."""
    (name,) = [n for n in services_of("product") if command(n) in ([], ["run"])]
    return name


def the_sandbox() -> str:
    (name,) = [n for n in services_of("devkit") if command(n)[:1] == ["sandbox"]]
    return name


def the_key_generator() -> str:
    (name,) = [n for n in services_of("devkit") if "keys generate" in " ".join(command(n))]
    return name


def the_kafka() -> str:
    (name,) = [
        n for n in services() if str(services()[n].get("image", "")).startswith("apache/kafka:")
    ]
    return name


def setting_names(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every environment variable the settings read."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= setting_names(annotation, (*prefix, name))
        else:
            names.add(env_name((*prefix, name)))
    return names


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The settings a service reads from its compose environment alone (no .env file)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("PA_")]:
        monkeypatch.delenv(name)
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return load_settings()


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """NAME://host:port,... as {NAME: (host, port)}."""
    found: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found


def seconds(duration: str) -> float:
    """A compose duration such as 35s or 1m30s, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def strings(node: object) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def prometheus_config() -> tuple[str, dict[str, Any]]:
    """The Prometheus service and the configuration file it is given."""
    (name,) = [n for n in services() if str(services()[n].get("image", "")).startswith("prom/")]
    (given,) = [w.partition("=")[2] for w in command(name) if w.startswith("--config.file=")]
    mount = mount_under(name, PurePosixPath(given))
    assert mount is not None
    assert mount.target == PurePosixPath(given)
    loaded = yaml.safe_load((COMPOSE.parent / mount.source).read_text("utf-8"))
    assert isinstance(loaded, dict)
    return name, loaded


# --- the tests --------------------------------------------------------------------------------


def test_every_pa_variable_is_a_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each PA_* variable a service sets is one of service.settings.Settings, and each
    service's set of them loads as valid settings."""
    known = setting_names()
    users = [name for name in services() if any(v.startswith("PA_") for v in environment(name))]
    assert the_service() in users
    for name in users:
        unknown = [v for v in environment(name) if v.startswith("PA_") and v not in known]
        assert unknown == [], name
        settings_of(name, monkeypatch, tmp_path)


def test_every_dependency_names_a_service_that_can_meet_its_condition() -> None:
    """depends_on names services of the file; a healthy condition waits on a service with a
    health check, a completed one on a one-shot job (restart "no")."""
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name in services():
        for target, condition in depends_on(name).items():
            assert target in services(), f"{name} -> {target}"
            assert condition in conditions
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], target
            if condition == "service_completed_successfully":
                assert services()[target].get("restart") == "no", target
    assert depends_on(the_service()).keys() >= {"topics", the_key_generator(), the_sandbox()}


def test_the_bootstrap_servers_are_kafkas_advertised_listener() -> None:
    """Every bootstrap address (the settings, Kafka's health check) is a listener Kafka
    advertises under its own name, on the port it listens on; its controller voter is
    itself on the controller listener's port."""
    kafka = the_kafka()
    env = environment(kafka)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    listening = listeners(env["KAFKA_LISTENERS"])
    host_names = {kafka, services()[kafka].get("hostname", kafka)}
    for listener, (host, port) in advertised.items():
        assert host in host_names, listener
        assert listening[listener][1] == port, listener
    addresses = {f"{host}:{port}" for host, port in advertised.values()}
    used = {
        name: env_of["PA_KAFKA__BOOTSTRAP_SERVERS"]
        for name in services()
        if "PA_KAFKA__BOOTSTRAP_SERVERS" in (env_of := environment(name))
    }
    assert the_service() in used
    for name, servers in used.items():
        assert {s.strip() for s in servers.split(",")} <= addresses, name
    health = [str(word) for word in services()[kafka]["healthcheck"]["test"]]
    assert option(health, "--bootstrap-server") in addresses
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    assert voter.rpartition(":")[0] in host_names
    assert int(voter.rpartition(":")[2]) == listening[controller][1]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_kafka_is_the_4x_version_the_tests_run() -> None:
    """The Kafka image is the official apache/kafka at the version of the tests' local
    broker (pa_devkit.localinfra.jars), a 4.x release."""
    image = str(services()[the_kafka()]["image"])
    assert image == f"apache/kafka:{KAFKA_VERSION}"
    assert KAFKA_VERSION.startswith("4.")


def test_the_pas_url_reaches_the_sandbox_with_the_same_consumer_key() -> None:
    """PA_PAS__BASE_URL names the sandbox service on the port it serves, which listens on
    every interface of its container, knows the consumer key the service sends and reads
    the key set the key generator writes."""
    sandbox = the_sandbox()
    url = urlsplit(environment(the_service())["PA_PAS__BASE_URL"])
    words = command(sandbox)
    args = build_devkit_parser().parse_args(words)
    assert url.scheme == "http"
    assert url.hostname == sandbox
    assert url.port == args.port
    assert option(words, "--port", str(SANDBOX_DEFAULT_PORT)) == str(url.port)
    assert args.host == "0.0.0.0"  # noqa: S104 - reached from the service's container
    assert args.consumer_key == environment(the_service())["PA_PAS__CONSUMER_KEY"]
    keys = mount_under(sandbox, PurePosixPath(args.keys_dir))
    generated = mount_under(the_key_generator(), PurePosixPath(args.keys_dir))
    assert keys is not None
    assert generated is not None
    assert keys.source == generated.source
    assert keys.read_only
    assert not generated.read_only


def test_the_key_generator_writes_where_the_service_reads() -> None:
    """The key generator runs `points-adjuster-devkit keys generate` into its volume with a
    password it writes beside the keys; every key, certificate and secret file the service
    is given lies in that same volume, mounted read-only, under the names the generator
    writes."""
    generator = the_key_generator()
    script = " ".join(command(generator)).replace("\\\n", " ")
    match = re.search(r"points-adjuster-devkit (keys generate[^>\n]*)", script)
    assert match is not None
    args = build_devkit_parser().parse_args(shlex.split(match.group(1)))
    keys_dir = PurePosixPath(args.dir)
    generated = mount_under(generator, keys_dir)
    assert generated is not None
    assert generated.named
    assert not generated.read_only
    password = keys_dir / PASSWORD_FILE
    assert f"> {password}" in script
    assert args.p12_password == f"$(cat {password})"
    written = {PurePosixPath(path).name for path in DevKeySet.in_directory(Path("/")).files()}
    written.add(PASSWORD_FILE)
    service = the_service()
    given = {
        name: PurePosixPath(value)
        for name, value in environment(service).items()
        if name.startswith("PA_PAS__") and name.endswith(("_PATH", "_FILE"))
    }
    assert "PA_PAS__SIGNING_KEY_PASSWORD_FILE" in given
    for name, path in given.items():
        mount = mount_under(service, path)
        assert mount is not None, name
        assert mount.source == generated.source, name
        assert mount.read_only, name
        assert path.parent == keys_dir, name
        assert path.name in written, name


def test_prometheus_scrapes_the_services_metrics_port() -> None:
    """Prometheus's configuration, mounted from deploy/prometheus/, scrapes /metrics of the
    service on PA_METRICS__PORT, and the service listens on every interface of its
    container (PA_METRICS__HOST=0.0.0.0) with the endpoint on."""
    _, config = prometheus_config()
    env = environment(the_service())
    defaults = Settings().metrics
    port = int(env.get("PA_METRICS__PORT", defaults.port))
    assert env.get("PA_METRICS__HOST") == "0.0.0.0"  # noqa: S104 - the scrape comes from outside
    assert env.get("PA_METRICS__ENABLED", "true") == "true"
    jobs = config["scrape_configs"]
    targets = [
        (job.get("metrics_path", "/metrics"), target)
        for job in jobs
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert targets == [("/metrics", f"{the_service()}:{port}")]


def test_published_ports_stay_on_the_hosts_loopback() -> None:
    """Every port the stack publishes binds the host's 127.0.0.1 only, and the service's
    metrics port is published on the port it listens on."""
    published: dict[str, list[str]] = {
        name: [str(p) for p in spec.get("ports", [])] for name, spec in services().items()
    }
    for name, ports in published.items():
        assert all(p.startswith("127.0.0.1:") for p in ports), name
    port = environment(the_service()).get("PA_METRICS__PORT")
    assert f"127.0.0.1:{port}:{port}" in published[the_service()]


def test_the_store_lives_on_a_volume_under_the_images_working_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The SQLite store's folder, resolved against the image's WORKDIR, is a named volume of
    the service (the container's root file system is read-only)."""
    settings = settings_of(the_service(), monkeypatch, tmp_path)
    assert settings.idempotency.backend == "sqlite"
    folder = product_workdir() / PurePosixPath(settings.idempotency.sqlite_path.as_posix()).parent
    mount = mount_under(the_service(), folder)
    assert mount is not None
    assert mount.named
    assert mount.target == folder
    assert not mount.read_only
    assert services()[the_service()].get("read_only") is True


def test_the_service_has_time_to_drain_on_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The service's stop_grace_period outlasts PA_SHUTDOWN_TIMEOUT_S plus the commit and
    closing that follow it, so compose's SIGKILL never cuts a drain short."""
    settings = settings_of(the_service(), monkeypatch, tmp_path)
    grace = seconds(str(services()[the_service()]["stop_grace_period"]))
    assert grace >= settings.shutdown_timeout_s + SHUTDOWN_EXTRA_S


def test_the_images_are_the_dockerfiles_targets_or_pinned_tags() -> None:
    """Built services use the repository's Dockerfile (context ..) and one of its stages,
    run as the image's user, and keep the product's entry point; the topics job runs a
    command of the product; other images carry an explicit version tag."""
    for name, spec in services().items():
        build = spec.get("build")
        if build is None:
            image = str(spec["image"])
            tag = image.rpartition(":")[2]
            assert ":" in image, name
            assert tag != "latest", name
            assert re.search(r"\d", tag), name
            continue
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["target"] in stages()
        assert "user" not in spec, name
    for name in services_of("product"):
        assert "entrypoint" not in services()[name], name
        build_parser().parse_args(command(name) or ["run"])
    topics = [n for n in services_of("product") if command(n)[:1] == ["topics"]]
    assert topics
    assert depends_on(topics[0]) == {the_kafka(): "service_healthy"}


def test_no_secret_is_written_in_the_stack() -> None:
    """No key material, random-looking token or secret value appears in the compose file or
    the Prometheus configuration, no .env file is read: secret-named variables and flags
    take a documented variable with a development default or a file, never a literal."""
    _, prometheus = prometheus_config()
    problems = [
        text[:40]
        for text in (*strings(compose()), *strings(prometheus))
        if KEY_MATERIAL.search(text) or RANDOM_TOKEN.search(interpolate(text))
    ]
    raw_env = {
        name: {str(k): str(v) for k, v in (spec.get("environment") or {}).items()}
        for name, spec in services().items()
    }
    for name, env in raw_env.items():
        problems.extend(
            f"{name}: {variable}"
            for variable, value in env.items()
            if SECRET_NAME.search(variable)
            and not variable.endswith(("_FILE", "_PATH"))
            and not re.fullmatch(r"\$\{\w+:-[\w-]*\}", value)
        )
    for name, spec in services().items():
        raw = spec.get("command") or []
        words = shlex.split(raw) if isinstance(raw, str) else [str(w) for w in raw]
        problems.extend(
            f"{name}: {flag}"
            for flag in SECRET_FLAGS & set(words)
            if not re.fullmatch(r"\$\{\w+:-[\w-]*\}", words[words.index(flag) + 1])
        )
        if "env_file" in spec:
            problems.append(f"{name}: env_file")
    assert problems == []


def test_every_variable_of_the_file_has_a_default_and_is_documented() -> None:
    """Each ${VARIABLE} the file reads has a development default, so the stack starts with
    none set and no .env file, and is named on docs/image-and-compose.md."""
    page = DOCS_PAGE.read_text("utf-8")
    found = {
        (name, has_default) for text in strings(compose()) for name, has_default in variables(text)
    }
    assert found
    assert [name for name, has_default in found if not has_default] == []
    assert [name for name, _ in found if f"`{name}`" not in page] == []


def the_grafana() -> str:
    (name,) = [n for n in services() if str(services()[n].get("image", "")).startswith("grafana/")]
    return name


def test_prometheus_loads_the_alert_rules_mounted_beside_its_configuration() -> None:
    """Each rule file prometheus.yml lists is mounted read-only at that path, from
    deploy/prometheus/alerts.yml: the rules the unit tests and the chart use."""
    name, config = prometheus_config()
    (given,) = [w.partition("=")[2] for w in command(name) if w.startswith("--config.file=")]
    rule_files = config["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        path = PurePosixPath(given).parent / rule_file
        mount = mount_under(name, path)
        assert mount is not None, rule_file
        assert mount.target == path
        assert mount.read_only
        assert (COMPOSE.parent / mount.source).resolve() == ROOT / "deploy/prometheus/alerts.yml"


def test_grafana_shows_the_dashboard_over_the_stacks_prometheus() -> None:
    """Grafana (a pinned grafana-oss image) gets its provisioning folder from
    deploy/grafana/provisioning: a data source on the Prometheus service and the port it
    listens on, and a dashboard provider reading the folder where the dashboard is mounted."""
    grafana = the_grafana()
    assert str(services()[grafana]["image"]).startswith("grafana/grafana-oss:")
    provisioning = mount_under(grafana, PurePosixPath("/etc/grafana/provisioning"))
    assert provisioning is not None
    assert provisioning.read_only
    folder = (COMPOSE.parent / provisioning.source).resolve()
    assert folder == ROOT / "deploy/grafana/provisioning"
    (datasource,) = yaml.safe_load((folder / "datasources/prometheus.yml").read_text("utf-8"))[
        "datasources"
    ]
    prometheus, _ = prometheus_config()
    listen = [w.partition("=")[2] for w in command(prometheus) if w.startswith("--web.listen")]
    port = int((listen or [":9090"])[0].rpartition(":")[2])
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus"
    assert (url.hostname, url.port) == (prometheus, port)
    assert prometheus in depends_on(grafana)
    (provider,) = yaml.safe_load((folder / "dashboards/points-adjuster.yml").read_text("utf-8"))[
        "providers"
    ]
    dashboards = PurePosixPath(provider["options"]["path"])
    board = mount_under(grafana, dashboards / "points-adjuster.json")
    assert board is not None
    assert board.target.parent == dashboards
    assert (COMPOSE.parent / board.source).resolve() == ROOT / "deploy/grafana/points-adjuster.json"
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home == str(board.target)
