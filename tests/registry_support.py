"""Pytest fixtures and helpers for tests that need a real schema registry.

Registered from ``tests/conftest.py`` (``pytest_plugins``). The registry speaks the Confluent
schema registry's REST API; the URL the fixtures give is that API's base, what a serializer's
``schema.registry.url`` and the service's ``PA_SCHEMA_REGISTRY__URL`` take.

Fixtures (session scope, so one registry serves the whole run):

``registry_under_test``
    A ``RegistryUnderTest``: its ``url``, where it came from (``source``) and, when this
    session started it, the ``LocalRegistry`` (``local``, else None). Found in this order:
    1. ``$PA_TEST_SCHEMA_REGISTRY_URL``, when set: a registry someone else runs;
    2. a ``LocalRegistry`` (Apicurio Registry, in memory) on a free loopback port, from the
       download ``make registry-jars`` caches, stopped at the end.
    When neither works the tests that use it are skipped with the reasons, or fail when
    ``$CI`` is ``true``.
``registry_url``
    Its URL: ``http://127.0.0.1:<port>/apis/ccompat/v7`` for a local one.

Function scope:

``fresh_subject``
    A subject name no other test uses (``test-<hex>-value``), deleted after the test when
    the registry allows it. The session's registry is shared: isolate a test by names of
    its own (this fixture, or ``unique_name`` for topics whose subjects the topic naming
    strategy derives), never by emptying the registry.

Helpers: ``unique_name(prefix)`` (``<prefix>-<12 hex digits>``) and ``own_registry()``, a
``LocalRegistry`` of the caller's own (one a test may stop, restart or kill), stopped at the
end.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import pytest

from pa_devkit.localinfra.registry import LocalRegistry
from tests.service_support import ExternalService

REGISTRY_URL_ENV = "PA_TEST_SCHEMA_REGISTRY_URL"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
REGISTRY = ExternalService("schema registry", REGISTRY_URL_ENV)
LOCAL_LABEL = "local registry (make registry-jars fetches it)"


@dataclass(frozen=True)
class RegistryUnderTest:
    """The schema registry the test session talks to."""

    url: str
    source: Literal["env", "local"]
    local: LocalRegistry | None = None


@pytest.fixture(scope="session")
def registry_under_test() -> Iterator[RegistryUnderTest]:
    """Find or start one registry for the session; stop it at the end if started here."""
    yield from REGISTRY.find_or_start(
        from_env=lambda url: RegistryUnderTest(url.rstrip("/"), "env"),
        local=lambda: LocalRegistry(port=0),
        from_local=lambda server: RegistryUnderTest(server.url, "local", server),
        local_label=LOCAL_LABEL,
    )


@pytest.fixture(scope="session")
def registry_url(registry_under_test: RegistryUnderTest) -> str:
    """The base URL of the session registry's Confluent-compatible API."""
    return registry_under_test.url


@pytest.fixture
def fresh_subject(registry_url: str) -> Iterator[str]:
    """A subject of this test's own, deleted after it (soft, then for good) when allowed."""
    subject = unique_name("test") + "-value"
    yield subject
    delete_subject(registry_url, subject)


def unique_name(prefix: str) -> str:
    """``<prefix>-<12 hex digits>``: a topic or subject name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def delete_subject(registry_url: str, subject: str) -> None:
    """Delete ``subject`` and its versions for good; a subject that is not there is fine."""
    path = f"{registry_url}/subjects/{quote(subject, safe='')}"
    with httpx.Client(timeout=10) as client:
        for params in ({}, {"permanent": "true"}):
            response = client.delete(path, params=params)
            if response.status_code == 404:
                return
            response.raise_for_status()


def registry_request(
    registry_url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One call to the Confluent-compatible API (``path`` below the base URL)."""
    with httpx.Client(timeout=10) as client:
        return client.request(
            method,
            registry_url + path,
            json=body,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )


@contextlib.contextmanager
def own_registry(**options: Any) -> Iterator[LocalRegistry]:
    """A ``LocalRegistry`` of the caller's own on a free port, stopped at the end; when it
    cannot start, the test fails under CI and is skipped with the reason elsewhere."""
    with REGISTRY.started(LocalRegistry(port=0, **options), LOCAL_LABEL) as server:
        yield server
