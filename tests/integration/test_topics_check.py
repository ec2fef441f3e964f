"""``points-adjuster topics`` and ``check`` against the session's real broker: the five topics
the service uses, and a PAS URL printed without its credentials."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.tls import DevTlsSet, generate_dev_tls
from service.cli import main
from service.kafka.clients import partitions_of
from service.settings import KafkaSettings
from service.tools.topics import service_topics

pytestmark = pytest.mark.kafka

MISSING_HINT = "missing (create it: points-adjuster topics)"
PASSWORD = "Sup3r-S3cret-pw"
QUERY_TOKEN = "tok-9f8e7d6c"


@pytest.fixture(autouse=True)
def _cli_environment(cli_environment: None) -> None:
    """Every test here runs in tests/conftest.py's clean command-line environment (autouse,
    so it is set up before the fixtures that put settings into the environment)."""


class _HeadHandler(BaseHTTPRequestHandler):
    """Answers every HEAD with 200 and an empty body: enough for check's PAS probe."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: nothing on stderr."""


def _serve_heads(tls: DevTlsSet | None = None) -> Iterator[int]:
    """A server standing in for PAS, answering HEAD with 200: plain HTTP, or https with the
    server certificate of ``tls``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeadHandler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.server_certificate, tls.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def pas_port() -> Iterator[int]:
    """The port of a plain HTTP server standing in for PAS, answering HEAD with 200."""
    yield from _serve_heads()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevTlsSet:
    return generate_dev_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def pas_tls_port(tls: DevTlsSet) -> Iterator[int]:
    """The port of an https server standing in for PAS (certificate from ``tls``'s CA)."""
    yield from _serve_heads(tls)


@pytest.fixture
def kafka_env(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    """PA_KAFKA__* pointing at the session's broker with five fresh topic names (none of
    them created); the memory idempotency store; a PAS URL where nothing listens (never
    Mastercard's). The Kafka settings those variables make."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "PA_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PA_KAFKA__GROUP_ID": f"pa-{suffix}",
        "PA_KAFKA__COMMAND_TOPIC": f"commands-{suffix}",
        "PA_KAFKA__COMPLETED_TOPIC": f"completed-{suffix}",
        "PA_KAFKA__FAILED_TOPIC": f"failed-{suffix}",
        "PA_KAFKA__DEAD_LETTER_TOPIC": f"dlt-{suffix}",
        "PA_KAFKA__REVIEW_TOPIC": f"review-{suffix}",
        "PA_IDEMPOTENCY__BACKEND": "memory",
        "PA_LOG__FORMAT": "console",
        "PA_PAS__BASE_URL": "https://127.0.0.1:1",  # nothing there; tests set their own
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=env["PA_KAFKA__GROUP_ID"],
        command_topic=env["PA_KAFKA__COMMAND_TOPIC"],
        completed_topic=env["PA_KAFKA__COMPLETED_TOPIC"],
        failed_topic=env["PA_KAFKA__FAILED_TOPIC"],
        dead_letter_topic=env["PA_KAFKA__DEAD_LETTER_TOPIC"],
        review_topic=env["PA_KAFKA__REVIEW_TOPIC"],
    )


def _topic_lines(output: str) -> dict[str, str]:
    """check's topic lines: topic name -> the whole line."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "topic":
            found[words[2]] = line
    return found


def _check_line(output: str, name: str) -> str:
    """The one line of check's output for the check called ``name``."""
    (line,) = [line for line in output.splitlines() if re.match(rf"(ok  |FAIL)  {name}  ", line)]
    return line


def test_service_topics_names_all_five_once() -> None:
    """service_topics lists command, completed, failed, dead-letter and review topics in
    that order, a name shared by two settings only once."""
    settings = KafkaSettings(
        command_topic="c", completed_topic="ok", failed_topic="ko", dead_letter_topic="d"
    )
    assert service_topics(settings) == ["c", "ok", "ko", "d", settings.review_topic]
    shared = settings.model_copy(update={"review_topic": "d"})
    assert service_topics(shared) == ["c", "ok", "ko", "d"]


def test_topics_creates_all_five_with_the_partition_count(
    kafka_env: KafkaSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """topics --partitions 2 creates the command, completed, failed, dead-letter and review
    topics with two partitions each; a second run finds them all and creates nothing."""
    names = service_topics(kafka_env)
    assert len(names) == 5
    assert main(["topics", "--partitions", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: created" for name in names]
    found = asyncio.run(partitions_of(kafka_env, names))
    assert found == {name: [0, 1] for name in names}

    assert main(["topics"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: exists" for name in names]


def test_topics_refuses_a_partition_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    """topics --partitions 0 is a usage error, before any broker is contacted."""
    with pytest.raises(SystemExit) as exit_info:
        main(["topics", "--partitions", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_check_verifies_each_of_the_five_topics_on_its_own_line(
    kafka_env: KafkaSettings,
    pas_keys_in_env: DevKeySet,
    pas_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check prints one line per topic: with none created each of the five fails with the
    hint to run topics; after topics all five pass and so does check."""
    monkeypatch.setenv("PA_PAS__BASE_URL", f"http://127.0.0.1:{pas_port}")
    monkeypatch.setenv("PA_PAS__ALLOW_PLAIN_HTTP", "true")
    names = service_topics(kafka_env)

    assert main(["check"]) == 1
    lines = _topic_lines(capsys.readouterr().out)
    assert list(lines) == names
    for line in lines.values():
        assert line.startswith("FAIL")
        assert line.endswith(MISSING_HINT)

    assert main(["topics"]) == 0
    capsys.readouterr()
    assert main(["check"]) == 0
    output = capsys.readouterr().out
    lines = _topic_lines(output)
    assert list(lines) == names
    for line in lines.values():
        assert line.startswith("ok")
        assert line.endswith("exists")
    assert all(line.startswith("ok") for line in output.splitlines())


def test_check_prints_the_pas_url_without_its_password(
    kafka_env: KafkaSettings,
    pas_keys_in_env: DevKeySet,
    pas_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PAS URL with a user and password is refused as a setting (PAS authenticates with
    OAuth1, and httpx would not send such a request), the password never printed; a secret
    query parameter in a URL check reports is shown as ***."""
    monkeypatch.setenv("PA_PAS__BASE_URL", f"http://svc-user:{PASSWORD}@127.0.0.1:{pas_port}")
    assert main(["check"]) == 2
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert "invalid setting PA_PAS__BASE_URL: must not carry credentials" in captured.err
    assert "svc-user:***@127.0.0.1" in captured.err

    monkeypatch.setenv("PA_PAS__BASE_URL", f"https://127.0.0.1:1/x?api_key={QUERY_TOKEN}")
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert QUERY_TOKEN not in captured.out + captured.err
    pas_line = _check_line(captured.out, "pas")
    assert pas_line.startswith("FAIL")
    assert "https://127.0.0.1:1/x?api_key=***" in pas_line
    assert pas_line.endswith("(setting PA_PAS__BASE_URL)")


def test_check_reports_a_missing_store_without_creating_it(
    kafka_env: KafkaSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """check on a SQLite store that does not exist says so and leaves no file behind (a
    file made by check would hide a lost store from the start-up continuity check); an
    existing store is shown with its identity."""
    store = tmp_path / "var" / "idempotency.sqlite3"
    monkeypatch.setenv("PA_IDEMPOTENCY__BACKEND", "sqlite")
    monkeypatch.setenv("PA_IDEMPOTENCY__SQLITE_PATH", str(store))
    main(["check"])
    line = _check_line(capsys.readouterr().out, "idempotency store")
    assert line.startswith("ok")
    assert "does not exist yet" in line
    assert not store.exists()
    asyncio.run(_make_store(store))
    main(["check"])
    line = _check_line(capsys.readouterr().out, "idempotency store")
    assert "identity " in line
    assert "new, not yet used" in line


async def _make_store(path: Path) -> None:
    from service.idempotency.sqlite import SqliteStore

    created = await SqliteStore.open(path)
    await created.close()


def test_check_probes_pas_over_tls_as_the_service_would(
    kafka_env: KafkaSettings,
    pas_keys_in_env: DevKeySet,
    tls: DevTlsSet,
    pas_tls_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check describes the TLS it will use and probes PAS over it: trusting the CA file the
    HEAD is answered; trusting only the default bundle the certificate does not verify, said
    in one line naming PA_PAS__CA_FILE."""
    url = f"https://127.0.0.1:{pas_tls_port}"
    monkeypatch.setenv("PA_PAS__BASE_URL", url)
    monkeypatch.setenv("PA_PAS__CA_FILE", str(tls.ca_certificate))
    monkeypatch.setenv("PA_PAS__SIGNATURE_METHOD", "RSA-PSS")
    main(["check"])
    output = capsys.readouterr().out
    tls_line = _check_line(output, "pas tls")
    assert tls_line.startswith("ok")
    assert tls_line.endswith(
        f"TLS 1.2 or later, trusting {tls.ca_certificate}, no client certificate"
    )
    assert "signing key (RSA-PSS signatures)" in _check_line(output, "pas credentials")
    assert _check_line(output, "pas").endswith(f"{url}/points-adjustments answered HTTP 200")

    monkeypatch.delenv("PA_PAS__CA_FILE")
    assert main(["check"]) == 1
    pas_line = _check_line(capsys.readouterr().out, "pas")
    assert pas_line.startswith("FAIL")
    assert "TLS: certificate verify failed: unable to get local issuer certificate" in pas_line
    assert pas_line.endswith("(setting PA_PAS__CA_FILE)")


def test_check_reports_unusable_tls_settings_and_warns_of_plain_http(
    kafka_env: KafkaSettings,
    pas_keys_in_env: DevKeySet,
    pas_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A CA file that is no certificate fails the TLS line (naming the setting) and PAS is
    not probed; plain http, allowed, passes with a warning that it is for development."""
    monkeypatch.setenv("PA_PAS__CA_FILE", str(tmp_path / "absent-ca.pem"))
    assert main(["check"]) == 1
    output = capsys.readouterr().out
    tls_line = _check_line(output, "pas tls")
    assert tls_line.startswith("FAIL")
    assert tls_line.endswith("(setting PA_PAS__CA_FILE)")
    assert _check_line(output, "pas").endswith("not probed: the TLS settings above are unusable")

    monkeypatch.delenv("PA_PAS__CA_FILE")
    monkeypatch.setenv("PA_PAS__BASE_URL", f"http://127.0.0.1:{pas_port}")
    monkeypatch.setenv("PA_PAS__ALLOW_PLAIN_HTTP", "true")
    main(["check"])
    output = capsys.readouterr().out
    assert _check_line(output, "pas tls").startswith("ok")
    assert "WARNING plain HTTP, no TLS (PA_PAS__ALLOW_PLAIN_HTTP=true)" in output
    assert _check_line(output, "pas").endswith("answered HTTP 200")


def test_check_probes_the_schema_registry_when_one_is_configured(
    kafka_env: KafkaSettings,
    pas_keys_in_env: DevKeySet,
    pas_port: int,
    registry_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No registry set: no registry line. The real registry: ok, with what the command
    subject holds. A registry where nothing listens: FAIL naming the request and the setting,
    after the client's retries."""
    monkeypatch.setenv("PA_PAS__BASE_URL", f"http://127.0.0.1:{pas_port}")
    monkeypatch.setenv("PA_PAS__ALLOW_PLAIN_HTTP", "true")
    main(["check"])
    assert "schema registry" not in capsys.readouterr().out

    monkeypatch.setenv("PA_SCHEMA_REGISTRY__URL", registry_url)
    main(["check"])
    line = _check_line(capsys.readouterr().out, "schema registry")
    assert line.startswith("ok")
    assert f"{registry_url} answered" in line
    subject = f"{kafka_env.command_topic}-value"
    assert f"command subject {subject}: no version registered" in line
    assert line.endswith("outcomes framed single-object")

    monkeypatch.setenv("PA_SCHEMA_REGISTRY__URL", "http://127.0.0.1:1/apis/ccompat/v7")
    monkeypatch.setenv("PA_SCHEMA_REGISTRY__MAX_RETRIES", "0")
    assert main(["check"]) == 1
    line = _check_line(capsys.readouterr().out, "schema registry")
    assert line.startswith("FAIL")
    assert "GET /subjects at http://127.0.0.1:1/apis/ccompat/v7" in line
    assert line.endswith("(setting PA_SCHEMA_REGISTRY__URL)")
