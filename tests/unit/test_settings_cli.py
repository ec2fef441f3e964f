"""Settings loading and the command line's handling of bad settings, input and dependencies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.cli import main
from service.errors import ConfigError
from service.kafka.clients import producer_options
from service.settings import Settings, load_settings
from service.tools.send import InputError, read_jsonl

ERROR_PREFIX = "points-adjuster: error: "
SUBCOMMANDS = ("run", "check", "send", "topics", "dlq")
DEVKIT_SUBCOMMANDS = ("sandbox", "keys", "demo")


@pytest.fixture(autouse=True)
def _cli_environment(cli_environment: None) -> None:
    """Every test here runs in tests/conftest.py's clean command-line environment (autouse,
    so it is set up before the fixtures that put settings into the environment)."""


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]


# -- settings --------------------------------------------------------------------------------


def test_defaults_load() -> None:
    """With no environment at all, the documented defaults load."""
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.command_topic == "points-adjustments.requested.v1"
    assert settings.pas.base_url == "https://sandbox.api.mastercard.com/loyalty"
    assert settings.pas.allow_plain_http is False
    assert settings.pas.signature_method == "RSA-SHA256"
    assert settings.pas.adjustment_path == "/points-adjustments"
    assert settings.pas.method == "POST"
    assert settings.pas.max_points == 1_000_000
    assert not hasattr(settings.pas, "unavailable_attempts")
    assert not hasattr(settings.pas, "unavailable_backoff_s")
    assert (settings.pas.connect_timeout_s, settings.pas.read_timeout_s) == (3.0, 10.0)
    assert settings.pas.pool_timeout_s == 5.0
    assert settings.retry.max_attempts == 6
    assert settings.retry.initial_backoff_s == 0.5
    assert settings.retry.max_backoff_s == 30.0
    assert settings.retry.jitter is True
    assert settings.reconciliation.enabled is True
    assert settings.reconciliation.reference_in_reason is True
    assert settings.reconciliation.settle_s == 30.0
    assert settings.reconciliation.max_lookups == 3
    assert settings.circuit.failure_threshold == 20
    assert settings.circuit.open_s == 5.0
    assert settings.processing.ordering == "key"
    assert settings.processing.max_in_flight == 200
    assert settings.processing.max_buffered == 2000
    assert settings.processing.command_ttl_s == 86_400.0
    assert settings.idempotency.backend == "sqlite"
    assert settings.idempotency.lease_s == 60.0
    assert settings.idempotency.retention_s == 30 * 86_400.0
    assert settings.idempotency.prune_interval_s == 3600.0
    assert settings.metrics.enabled is True


def test_new_groups_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """PA_RETRY__*, PA_RECONCILIATION__*, PA_CIRCUIT__*, PA_PROCESSING__* and retention are read."""
    monkeypatch.setenv("PA_RETRY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("PA_RETRY__INITIAL_BACKOFF_S", "0.25")
    monkeypatch.setenv("PA_RETRY__MAX_BACKOFF_S", "4")
    monkeypatch.setenv("PA_RETRY__JITTER", "false")
    monkeypatch.setenv("PA_RECONCILIATION__ENABLED", "false")
    monkeypatch.setenv("PA_RECONCILIATION__REFERENCE_IN_REASON", "false")
    monkeypatch.setenv("PA_RECONCILIATION__SETTLE_S", "0")
    monkeypatch.setenv("PA_RECONCILIATION__MAX_LOOKUPS", "5")
    monkeypatch.setenv("PA_CIRCUIT__FAILURE_THRESHOLD", "1")
    monkeypatch.setenv("PA_CIRCUIT__OPEN_S", "0.5")
    monkeypatch.setenv("PA_PROCESSING__ORDERING", "partition")
    monkeypatch.setenv("PA_PROCESSING__MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("PA_PROCESSING__MAX_BUFFERED", "9")
    monkeypatch.setenv("PA_PROCESSING__ADAPTIVE_CONCURRENCY", "false")
    monkeypatch.setenv("PA_PROCESSING__COMMAND_TTL_S", "120")
    monkeypatch.setenv("PA_PROCESSING__MAX_BUFFERED_BYTES", "2097152")
    monkeypatch.setenv("PA_PROCESSING__MAX_RECORD_BYTES", "8192")
    monkeypatch.setenv("PA_PROCESSING__FAULT_BACKOFF_MAX_S", "3")
    monkeypatch.setenv("PA_IDEMPOTENCY__RETENTION_S", "3600")
    monkeypatch.setenv("PA_IDEMPOTENCY__PRUNE_INTERVAL_S", "60")
    settings = load_settings()
    assert settings.retry.model_dump() == {
        "max_attempts": 2,
        "initial_backoff_s": 0.25,
        "max_backoff_s": 4.0,
        "jitter": False,
    }
    assert settings.reconciliation.model_dump() == {
        "enabled": False,
        "reference_in_reason": False,
        "settle_s": 0.0,
        "max_lookups": 5,
    }
    assert (settings.circuit.failure_threshold, settings.circuit.open_s) == (1, 0.5)
    assert settings.processing.model_dump() == {
        "ordering": "partition",
        "max_in_flight": 7,
        "max_buffered": 9,
        "adaptive_concurrency": False,
        "command_ttl_s": 120.0,
        "max_buffered_bytes": 2_097_152,
        "max_record_bytes": 8192,
        "fault_backoff_max_s": 3.0,
    }
    assert settings.idempotency.retention_s == 3600.0
    assert settings.idempotency.prune_interval_s == 60.0


def test_the_group_instance_id_is_read_and_unset_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Static membership is off unless PA_KAFKA__GROUP_INSTANCE_ID names the instance."""
    assert load_settings().kafka.group_instance_id is None
    monkeypatch.setenv("PA_KAFKA__GROUP_INSTANCE_ID", "points-adjuster-0")
    assert load_settings().kafka.group_instance_id == "points-adjuster-0"


@pytest.mark.parametrize("value", ["", "pod 0", "pod/0", "x" * 250])
def test_a_group_instance_id_kafka_would_refuse_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """An empty, too long or ill-charactered instance id is refused at start-up, naming it."""
    monkeypatch.setenv("PA_KAFKA__GROUP_INSTANCE_ID", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "PA_KAFKA__GROUP_INSTANCE_ID"


def test_the_producers_linger_is_read_and_given_to_every_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PA_KAFKA__LINGER_MS (default 5 ms) reaches the options every producer is built with."""
    assert producer_options(load_settings().kafka)["linger_ms"] == 5
    monkeypatch.setenv("PA_KAFKA__LINGER_MS", "20")
    assert producer_options(load_settings().kafka)["linger_ms"] == 20


@pytest.mark.parametrize("value", ["-1", "1001", "soon"])
def test_a_linger_out_of_range_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PA_KAFKA__LINGER_MS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "PA_KAFKA__LINGER_MS"


def test_the_decryption_key_password_file_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PA_PAS__DECRYPTION_KEY_PASSWORD_FILE is a setting of its own, beside the value."""
    monkeypatch.setenv("PA_PAS__DECRYPTION_KEY_PASSWORD_FILE", str(tmp_path / "password"))
    assert load_settings().pas.decryption_key_password_file == tmp_path / "password"


def test_removed_pas_retry_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The former PA_PAS__UNAVAILABLE_* variables no longer exist: they change nothing."""
    monkeypatch.setenv("PA_PAS__UNAVAILABLE_ATTEMPTS", "0")
    monkeypatch.setenv("PA_PAS__UNAVAILABLE_BACKOFF_S", "-1")
    settings = load_settings()
    assert settings.retry.max_attempts == 6
    assert settings.retry.initial_backoff_s == 0.5


def test_environment_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """PA_<GROUP>__<NAME> variables set nested settings, lists given as JSON."""
    monkeypatch.setenv("PA_KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2:9093")
    monkeypatch.setenv("PA_PAS__BASE_URL", "https://api.mastercard.com/loyalty/")
    monkeypatch.setenv("PA_PAS__ALLOWED_TYPE_CODES", '["GOODWILL", "PROMO"]')
    monkeypatch.setenv("PA_IDEMPOTENCY__BACKEND", "memory")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "b1:9092,b2:9093"
    assert settings.pas.base_url == "https://api.mastercard.com/loyalty"
    assert settings.pas.allowed_type_codes == frozenset({"GOODWILL", "PROMO"})
    assert settings.idempotency.backend == "memory"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PA_KAFKA__BOOTSTRAP_SERVERS", "nohost"),
        ("PA_KAFKA__BOOTSTRAP_SERVERS", "b1:9092,b2"),
        ("PA_KAFKA__BOOTSTRAP_SERVERS", "b1:port"),
        ("PA_PAS__BASE_URL", "ftp://x"),
        ("PA_PAS__BASE_URL", "http://pas.example/loyalty"),
        ("PA_PAS__ALLOW_PLAIN_HTTP", "perhaps"),
        ("PA_PAS__SIGNATURE_METHOD", "HMAC-SHA1"),
        ("PA_PAS__SIGNATURE_METHOD", "rsa-pss"),
        ("PA_PAS__CLIENT_KEY_FILE", "/etc/pas/client.key.pem"),
        ("PA_PAS__CLIENT_KEY_PASSWORD_FILE", "/etc/pas/client.key.password"),
        ("PA_PAS__METHOD", "PUT"),
        ("PA_PAS__POOL_TIMEOUT_S", "0"),
        ("PA_RETRY__MAX_ATTEMPTS", "0"),
        ("PA_RETRY__MAX_ATTEMPTS", "many"),
        ("PA_RETRY__INITIAL_BACKOFF_S", "-1"),
        ("PA_RETRY__MAX_BACKOFF_S", "-0.5"),
        ("PA_RETRY__JITTER", "sometimes"),
        ("PA_RECONCILIATION__ENABLED", "perhaps"),
        ("PA_RECONCILIATION__SETTLE_S", "-1"),
        ("PA_RECONCILIATION__MAX_LOOKUPS", "0"),
        ("PA_CIRCUIT__FAILURE_THRESHOLD", "0"),
        ("PA_CIRCUIT__OPEN_S", "0"),
        ("PA_PROCESSING__ORDERING", "offset"),
        ("PA_PROCESSING__MAX_IN_FLIGHT", "0"),
        ("PA_PROCESSING__MAX_BUFFERED", "0"),
        ("PA_PROCESSING__COMMAND_TTL_S", "0"),
        ("PA_IDEMPOTENCY__BACKEND", "redis"),
        ("PA_IDEMPOTENCY__LEASE_S", "-1"),
        ("PA_IDEMPOTENCY__RETENTION_S", "0"),
        ("PA_IDEMPOTENCY__PRUNE_INTERVAL_S", "-5"),
        ("PA_METRICS__PORT", "70000"),
        ("PA_LOG__LEVEL", "LOUD"),
        ("PA_SHUTDOWN_TIMEOUT_S", "0"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A wrong value raises ConfigError naming the exact environment variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == variable
    assert str(caught.value).startswith(f"{variable}: ")


@pytest.mark.parametrize(
    ("overrides", "lease", "shortest"),
    [
        ({}, "24.9", "25"),
        ({}, "10", "25"),
        ({"PA_PAS__CALL_TIMEOUT_S": "60"}, "60", "65"),
        ({"PA_PAS__CALL_TIMEOUT_S": "3"}, "7", "8"),
    ],
    ids=["just-short", "shorter", "equal-to-the-call", "short-call"],
)
def test_a_lease_not_outlasting_a_call_by_the_margin_is_refused_naming_the_lease(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], lease: str, shortest: str
) -> None:
    """A lease below the call timeout + 5 s is refused, naming the lease setting."""
    monkeypatch.setenv("PA_IDEMPOTENCY__LEASE_S", lease)
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "PA_IDEMPOTENCY__LEASE_S"
    message = str(caught.value)
    assert message.startswith("PA_IDEMPOTENCY__LEASE_S: ")
    assert f"{lease} s must be at least PA_PAS__CALL_TIMEOUT_S + 5 s ({shortest} s)" in message


def test_a_shorter_call_timeout_allows_a_shorter_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-read, connect and pool timeouts no longer count: the call timeout bounds them."""
    monkeypatch.setenv("PA_IDEMPOTENCY__LEASE_S", "15")
    monkeypatch.setenv("PA_PAS__READ_TIMEOUT_S", "30")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "PA_IDEMPOTENCY__LEASE_S"
    monkeypatch.setenv("PA_PAS__CALL_TIMEOUT_S", "10")
    assert load_settings().idempotency.lease_s == 15.0


def test_a_lease_exactly_the_call_plus_the_margin_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease of exactly the call timeout + 5 s is accepted."""
    monkeypatch.setenv("PA_IDEMPOTENCY__LEASE_S", "25")
    assert load_settings().idempotency.lease_s == 25.0


def test_run_with_a_too_short_lease_exits_2_naming_the_lease(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with a lease shorter than a PAS call exits 2 with one line naming the lease."""
    monkeypatch.setenv("PA_PAS__CALL_TIMEOUT_S", "120")
    assert main(["run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{ERROR_PREFIX}invalid setting PA_IDEMPOTENCY__LEASE_S: 60 s")


def test_config_error_shows_the_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error message quotes the value that was given."""
    monkeypatch.setenv("PA_KAFKA__BOOTSTRAP_SERVERS", "nohost")
    with pytest.raises(ConfigError, match="nohost"):
        load_settings()


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A .env file in the working directory is a settings source, below the environment."""
    (tmp_path / ".env").write_text(
        "PA_KAFKA__GROUP_ID=from-dotenv\nPA_KAFKA__CLIENT_ID=from-dotenv\n", encoding="utf-8"
    )
    monkeypatch.setenv("PA_KAFKA__CLIENT_ID", "from-env")
    settings = load_settings()
    assert settings.kafka.group_id == "from-dotenv"
    assert settings.kafka.client_id == "from-env"


# -- the command line ------------------------------------------------------------------------


def test_run_with_a_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with a bad variable exits 2 and prints one line naming the variable."""
    monkeypatch.setenv("PA_KAFKA__BOOTSTRAP_SERVERS", "nohost")
    assert main(["run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "points-adjuster: error: invalid setting PA_KAFKA__BOOTSTRAP_SERVERS"
    )


@pytest.mark.parametrize("command", ["run", "check", "topics"])
def test_a_plain_http_pas_url_is_refused_in_one_line_naming_the_way_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """An http:// PAS URL stops every command at the settings, in one line naming
    PA_PAS__BASE_URL and PA_PAS__ALLOW_PLAIN_HTTP, the URL quoted without its secrets."""
    monkeypatch.setenv("PA_PAS__BASE_URL", "http://pas.example/loyalty?token=t0ps3cret")
    assert main([command]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{ERROR_PREFIX}invalid setting PA_PAS__BASE_URL: plain http://")
    assert "set PA_PAS__ALLOW_PLAIN_HTTP=true" in line
    assert "t0ps3cret" not in line


def test_plain_http_is_accepted_when_allowed_and_https_always(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PA_PAS__ALLOW_PLAIN_HTTP=true lets an http:// URL load (a development run); an
    https:// URL loads whatever it says, and plain_http tells the two apart."""
    monkeypatch.setenv("PA_PAS__BASE_URL", "http://127.0.0.1:8081/")
    monkeypatch.setenv("PA_PAS__ALLOW_PLAIN_HTTP", "true")
    allowed = load_settings().pas
    assert (allowed.base_url, allowed.plain_http) == ("http://127.0.0.1:8081", True)
    monkeypatch.setenv("PA_PAS__BASE_URL", "https://api.mastercard.com/loyalty")
    assert load_settings().pas.plain_http is False
    monkeypatch.setenv("PA_PAS__ALLOW_PLAIN_HTTP", "false")
    assert load_settings().pas.plain_http is False


def test_transport_security_settings_load_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CA bundle, the mutual-TLS files and the signature method come from PA_PAS__*."""
    for name, value in {
        "PA_PAS__CA_FILE": "/etc/pas/ca.pem",
        "PA_PAS__CLIENT_CERT_FILE": "/etc/pas/client.crt.pem",
        "PA_PAS__CLIENT_KEY_FILE": "/etc/pas/client.key.pem",
        "PA_PAS__CLIENT_KEY_PASSWORD_FILE": "/etc/pas/client.key.password",
        "PA_PAS__SIGNATURE_METHOD": "RSA-PSS",
    }.items():
        monkeypatch.setenv(name, value)
    pas = load_settings().pas
    assert pas.ca_file == Path("/etc/pas/ca.pem")
    assert pas.client_cert_file == Path("/etc/pas/client.crt.pem")
    assert pas.client_key_file == Path("/etc/pas/client.key.pem")
    assert pas.client_key_password_file == Path("/etc/pas/client.key.password")
    assert pas.signature_method == "RSA-PSS"


@pytest.mark.parametrize("command", ["run", "check", "topics"])
def test_every_settings_command_reports_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Every command that reads settings fails the same way, before touching anything."""
    monkeypatch.setenv("PA_PAS__BASE_URL", "ftp://x")
    assert main([command]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("points-adjuster: error: invalid setting PA_PAS__BASE_URL")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and lists each subcommand."""
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert f"    {command} " in out, command
    assert "points-adjuster-devkit --help" in out


def test_the_devkit_help_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """points-adjuster-devkit --help exits 0 and lists the sandbox, keys and demo."""
    from pa_devkit.cli import main as devkit_main

    with pytest.raises(SystemExit) as caught:
        devkit_main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in DEVKIT_SUBCOMMANDS:
        assert f"    {command} " in out, command


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand exits 2 with argparse's usage message."""
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_send_with_a_missing_file_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`send --file` naming a missing file fails non-zero with one line naming the file."""
    missing = tmp_path / "nowhere" / "commands.jsonl"
    code = main(["send", "--file", str(missing)])
    assert code != 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(ERROR_PREFIX)
    assert str(missing) in lines[0]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("option", ["--duplicates", "--invalid"])
def test_send_share_out_of_range_is_refused(
    capsys: pytest.CaptureFixture[str], option: str
) -> None:
    """A share outside 0..1 is refused before anything is sent."""
    assert main(["send", "--count", "1", option, "1.5"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert option in line


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("pas_keys_in_env")
def test_run_with_unreachable_broker_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` against a port where nothing listens exits 2 within seconds, naming the setting."""
    monkeypatch.setenv("PA_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("PA_KAFKA__STARTUP_TIMEOUT_S", "3")
    monkeypatch.setenv("PA_METRICS__ENABLED", "false")
    monkeypatch.setenv("PA_IDEMPOTENCY__BACKEND", "memory")
    started = time.monotonic()
    code = main(["run"])
    elapsed = time.monotonic() - started
    assert code == 2
    assert elapsed < 10
    (line,) = error_lines(capsys.readouterr().err)
    assert "PA_KAFKA__BOOTSTRAP_SERVERS" in line
    assert "127.0.0.1:1" in line


# -- reading a commands file ---------------------------------------------------------------


GOOD_LINE = (
    '{"idempotency_key": "k-1", "bank_account_number": "5123456789012345000",'
    ' "points_to_adjust": 5, "adjustment_type_code": "GOODWILL",'
    ' "adjustment_reason": "r", "adjusted_by": "a", "correlation_id": "c",'
    ' "requested_by": "crm", "occurred_at": "2025-03-04T05:06:07+00:00"}'
)


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"idempotency_key": "k-2"}', "missing bank_account_number"),
        (GOOD_LINE.replace("2025-03-04T05:06:07+00:00", "yesterday"), "occurred_at"),
    ],
    ids=["not-json", "not-object", "missing-fields", "bad-timestamp"],
)
def test_read_jsonl_reports_path_and_line_of_a_bad_line(
    tmp_path: Path, bad_line: str, problem: str
) -> None:
    """A bad line is reported as path:line with what is wrong (blank lines still count)."""
    path = tmp_path / "commands.jsonl"
    path.write_text(f"{GOOD_LINE}\n\n{bad_line}\n{GOOD_LINE}\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        list(read_jsonl(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message


def test_read_jsonl_reads_good_lines(tmp_path: Path) -> None:
    """Good lines become commands with a parsed occurred_at and default metadata."""
    path = tmp_path / "commands.jsonl"
    path.write_text(f"{GOOD_LINE}\n   \n{GOOD_LINE}\n", encoding="utf-8")
    commands = list(read_jsonl(path))
    assert len(commands) == 2
    assert commands[0]["occurred_at"].isoformat() == "2025-03-04T05:06:07+00:00"
    assert commands[0]["metadata"] == {}


def test_send_with_a_bad_line_names_path_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`send --file` with a bad line exits non-zero with one path:line error."""
    path = tmp_path / "commands.jsonl"
    path.write_text(f"{GOOD_LINE}\n{{oops\n", encoding="utf-8")
    assert main(["send", "--file", str(path)]) != 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{ERROR_PREFIX}{path}:2: ")


def test_a_refused_url_is_quoted_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PAS URL refused at start-up is quoted in the error with its password hidden."""
    monkeypatch.setenv("PA_PAS__BASE_URL", "ftp://svc:hunter2secret@pas.example/loyalty")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2secret" not in str(caught.value)
    assert "svc:***@pas.example" in str(caught.value)


def test_a_pas_url_with_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """https://user:password@host is refused naming the setting (PAS authenticates with
    OAuth1; httpx would not send such a request), the password never in the message."""
    monkeypatch.setenv("PA_PAS__BASE_URL", "https://svc:hunter2secret@pas.example/loyalty")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "PA_PAS__BASE_URL"
    assert "must not carry credentials" in str(caught.value)
    assert "hunter2secret" not in str(caught.value)
