"""The schema registry client: requests, caching, retries, errors and authentication."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.errors import ConfigError
from service.registry.client import RegisteredSchema, SchemaRegistryClient
from service.registry.errors import RegistryError, RegistryUnavailable, SchemaNotFound
from service.registry.subjects import SubjectStrategy, subject_name
from service.settings import SchemaRegistrySettings, load_settings

URL = "http://registry.test/apis/ccompat/v7"
SCHEMA = '{"type":"string"}'

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport that answers from ``handler`` and keeps every request."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._handler(request)


def client_of(recorder: Recorder, **options: Any) -> tuple[SchemaRegistryClient, list[float]]:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    options.setdefault("max_retries", 3)
    options.setdefault("retry_backoff_s", 0.1)
    client = SchemaRegistryClient(URL, transport=recorder.transport, sleep=sleep, **options)
    return client, pauses


def ok(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


async def test_a_schema_is_fetched_by_id_once_then_served_from_the_cache() -> None:
    """GET /schemas/ids/{id} once; the second ask makes no request."""
    recorder = Recorder(lambda request: ok({"schema": SCHEMA}))
    client, _ = client_of(recorder)
    assert await client.schema_by_id(7) == SCHEMA
    assert await client.schema_by_id(7) == SCHEMA
    assert client.cached(7) == SCHEMA
    assert [str(r.url) for r in recorder.requests] == [f"{URL}/schemas/ids/7"]
    await client.aclose()


async def test_register_lookup_latest_versions_and_compatibility_use_the_confluent_paths() -> None:
    """Each call sends the Confluent path and body, the subject escaped as one segment."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode().removeprefix("/apis/ccompat/v7")
        if request.method == "POST" and path == "/subjects/a%2Fb-value/versions":
            return ok({"id": 11})
        if request.method == "POST" and path == "/subjects/a%2Fb-value":
            return ok({"subject": "a/b-value", "id": 11, "version": 2, "schema": SCHEMA})
        if path == "/subjects/a%2Fb-value/versions/latest":
            return ok({"subject": "a/b-value", "id": 11, "version": 2, "schema": SCHEMA})
        if path == "/subjects/a%2Fb-value/versions":
            return ok([1, 2])
        if path == "/compatibility/subjects/a%2Fb-value/versions/latest":
            return ok({"is_compatible": False})
        return ok({"error_code": 404, "message": path}, 404)

    recorder = Recorder(answer)
    client, _ = client_of(recorder)
    assert await client.register("a/b-value", SCHEMA) == 11
    assert await client.lookup("a/b-value", SCHEMA) == 11
    assert await client.latest("a/b-value") == RegisteredSchema(11, 2, SCHEMA)
    assert await client.versions("a/b-value") == [1, 2]
    assert await client.is_compatible("a/b-value", SCHEMA) is False
    sent = json.loads(recorder.requests[0].content)
    assert sent == {"schema": SCHEMA}
    assert recorder.requests[0].headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
    await client.aclose()


async def test_missing_subjects_and_schemas_answer_none_or_schema_not_found() -> None:
    """404s: lookup and latest say None, versions empty, compatibility True (nothing to break),
    schema_by_id raises SchemaNotFound with the registry's code, without retrying."""
    recorder = Recorder(
        lambda request: ok({"error_code": 40403, "message": "Schema not found"}, 404)
    )
    client, pauses = client_of(recorder)
    assert await client.lookup("s", SCHEMA) is None
    assert await client.latest("s") is None
    assert await client.versions("s") == []
    assert await client.is_compatible("s", SCHEMA) is True
    with pytest.raises(SchemaNotFound) as caught:
        await client.schema_by_id(404)
    assert (caught.value.status, caught.value.code) == (404, 40403)
    assert "40403" in str(caught.value)
    assert not caught.value.retriable
    assert pauses == []
    await client.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_a_transient_status_is_retried_with_a_growing_pause(status: int) -> None:
    """5xx and 429 are tried again (pauses doubling) until an answer comes."""
    answers = iter([ok({}, status), ok({}, status), ok({"schema": SCHEMA})])
    recorder = Recorder(lambda request: next(answers))
    client, pauses = client_of(recorder)
    assert await client.schema_by_id(1) == SCHEMA
    assert len(recorder.requests) == 3
    assert len(pauses) == 2
    assert 0.05 <= pauses[0] <= 0.1
    assert 0.1 <= pauses[1] <= 0.2
    await client.aclose()


async def test_retry_after_is_a_floor_of_the_pause() -> None:
    """A 429 with Retry-After: 2 waits at least 2 s before the next try."""
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"}), ok({"schema": SCHEMA})])
    recorder = Recorder(lambda request: next(answers))
    client, pauses = client_of(recorder)
    await client.schema_by_id(1)
    assert pauses == [2.0]
    await client.aclose()


async def test_an_unreachable_registry_is_unavailable_after_the_retries() -> None:
    """Connection refused every time: max_retries + 1 attempts, then RegistryUnavailable,
    retriable, naming the request and the registry."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    recorder = Recorder(refuse)
    client, pauses = client_of(recorder, max_retries=2)
    with pytest.raises(RegistryUnavailable) as caught:
        await client.schema_by_id(5)
    assert caught.value.retriable
    assert len(recorder.requests) == 3
    assert len(pauses) == 2
    assert "GET /schemas/ids/5" in str(caught.value)
    assert "connection refused" in str(caught.value)
    await client.aclose()


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
async def test_a_refusal_is_a_registry_error_at_once(status: int) -> None:
    """A 4xx other than 404 and 429 is not retried: RegistryError with its status."""
    recorder = Recorder(
        lambda request: ok({"error_code": status * 100 + 1, "message": "no"}, status)
    )
    client, pauses = client_of(recorder)
    with pytest.raises(RegistryError) as caught:
        await client.register("s", SCHEMA)
    assert type(caught.value) is RegistryError
    assert caught.value.status == status
    assert pauses == []
    assert len(recorder.requests) == 1
    await client.aclose()


async def test_an_answer_of_the_wrong_shape_is_a_registry_error() -> None:
    """A 200 without the field asked for names the field."""
    recorder = Recorder(lambda request: ok({"nothing": 1}))
    client, _ = client_of(recorder)
    with pytest.raises(RegistryError, match="no str 'schema'"):
        await client.schema_by_id(3)
    await client.aclose()


def settings(**values: Any) -> SchemaRegistrySettings:
    return SchemaRegistrySettings(url=URL, **values)


async def test_basic_auth_sends_the_user_and_the_password_file_and_never_prints_them(
    tmp_path: Path,
) -> None:
    """username + password_file: every request carries Basic auth; errors hold neither."""
    secret = tmp_path / "password"
    secret.write_text("s3cret-Pa55\n")
    recorder = Recorder(lambda request: ok({"error_code": 50001, "message": "down"}, 503))
    client = SchemaRegistryClient.from_settings(
        settings(username="svc", password_file=secret, max_retries=0),
        transport=recorder.transport,
    )
    with pytest.raises(RegistryUnavailable) as caught:
        await client.schema_by_id(1)
    expected = base64.b64encode(b"svc:s3cret-Pa55").decode()
    assert recorder.requests[0].headers["Authorization"] == f"Basic {expected}"
    assert "s3cret" not in str(caught.value)
    assert expected not in str(caught.value)
    await client.aclose()


async def test_a_bearer_token_is_read_from_its_file_again_when_it_changes(
    tmp_path: Path,
) -> None:
    """bearer_token_file: the token of the file as it is at each request."""
    token = tmp_path / "token"
    token.write_text("first-token\n")
    recorder = Recorder(lambda request: ok({"schema": SCHEMA}))
    client = SchemaRegistryClient.from_settings(
        settings(bearer_token_file=token), transport=recorder.transport
    )
    await client.schema_by_id(1)
    token.write_text("second-token-longer\n")
    await client.schema_by_id(2)
    assert [r.headers["Authorization"] for r in recorder.requests] == [
        "Bearer first-token",
        "Bearer second-token-longer",
    ]
    await client.aclose()


def test_registry_settings_refuse_half_an_auth_and_both_auths(tmp_path: Path) -> None:
    """A user without a password file (and the reverse), or basic with bearer, is refused
    naming the setting; confluent outcome framing needs a registry URL."""
    secret = tmp_path / "p"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="PA_SCHEMA_REGISTRY__PASSWORD_FILE: required"):
        load_settings(schema_registry={"url": URL, "username": "u"})
    with pytest.raises(ConfigError, match="PA_SCHEMA_REGISTRY__USERNAME: required"):
        load_settings(schema_registry={"url": URL, "password_file": str(secret)})
    with pytest.raises(ConfigError, match="PA_SCHEMA_REGISTRY__BEARER_TOKEN_FILE: not with"):
        load_settings(
            schema_registry={
                "url": URL,
                "username": "u",
                "password_file": str(secret),
                "bearer_token_file": str(secret),
            }
        )
    with pytest.raises(ConfigError, match="PA_KAFKA__OUTCOME_FRAMING: confluent needs"):
        load_settings(kafka={"outcome_framing": "confluent"})
    with pytest.raises(ConfigError, match="PA_SCHEMA_REGISTRY__URL"):
        load_settings(schema_registry={"url": "registry:8081"})


def test_an_unreadable_password_file_names_its_setting(tmp_path: Path) -> None:
    """The password file is read when the client is built; a missing one is a ConfigError."""
    with pytest.raises(ConfigError, match="PA_SCHEMA_REGISTRY__PASSWORD_FILE: cannot read"):
        SchemaRegistryClient.from_settings(
            settings(username="u", password_file=tmp_path / "missing")
        )


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("topic", "t.v1-value"), ("record", "a.b.R"), ("topic_record", "t.v1-a.b.R")],
)
def test_subjects_are_named_as_confluents_strategies_name_them(
    strategy: SubjectStrategy, expected: str
) -> None:
    """TopicNameStrategy, RecordNameStrategy and TopicRecordNameStrategy, value subjects."""
    assert subject_name(strategy, "t.v1", "a.b.R") == expected
