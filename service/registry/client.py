"""An async client of the Confluent Schema Registry REST API, on httpx.

It speaks the subset the service needs, which Confluent's registry and Apicurio Registry's
Confluent-compatible API (``/apis/ccompat/v7``) both serve:

==========================================  ===============================================
method                                      request
==========================================  ===============================================
``schema_by_id(id)``                        ``GET /schemas/ids/{id}`` (cached: ids are
                                            immutable)
``register(subject, schema)``               ``POST /subjects/{subject}/versions``
``lookup(subject, schema)``                 ``POST /subjects/{subject}`` (None: not there)
``latest(subject)``                         ``GET /subjects/{subject}/versions/latest``
``versions(subject)`` / ``version(s, v)``   ``GET /subjects/{subject}/versions[/{v}]``
``is_compatible(subject, schema, version)`` ``POST /compatibility/subjects/{subject}/versions/
                                            {version}`` (True when the subject is new)
``probe()``                                 ``GET /subjects``
==========================================  ===============================================

A request failing for a transient reason (no connection, a timeout, 5xx, 429) is tried again
``max_retries`` times with a doubling pause (``Retry-After`` is a floor), then raises
:class:`RegistryUnavailable`; any other refusal raises :class:`RegistryError` at once, a 404
:class:`SchemaNotFound`. Authentication: basic (user name and a password file) or a bearer
token read from a file again whenever the file changes. Credentials never appear in errors
or logs.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog

from service.redact import redact_url
from service.registry.errors import RegistryError, RegistryUnavailable, SchemaNotFound
from service.settings import SchemaRegistrySettings

log = structlog.get_logger("service.registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_CACHED_SCHEMAS = 10_000
"""Schemas kept by id; ids are immutable, so an entry never goes stale (bounded all the same)."""

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class RegisteredSchema:
    """One version of a subject: the registry's global id, the version and the schema text."""

    id: int
    version: int
    schema: str


class BearerFileAuth(httpx.Auth):
    """``Authorization: Bearer <token>``, the token read from ``path`` whenever it changed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def _current(self) -> str:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token = self._path.read_text(encoding="utf-8").strip()
                self._stamp = stamp
        except OSError as exc:
            if not self._token:  # never read: nothing to send
                raise RegistryError(
                    f"cannot read the bearer token file {self._path}: {exc.strerror or exc}"
                ) from None
            # A token being replaced (a side-car's rename): keep the last one read.
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._current()}"
        yield request


def registry_auth(settings: SchemaRegistrySettings) -> httpx.Auth | None:
    """The auth the settings name: basic, bearer from a file, or none."""
    password = settings.password()
    if settings.username is not None and password is not None:
        return httpx.BasicAuth(settings.username, password.get_secret_value())
    if settings.bearer_token_file is not None:
        return BearerFileAuth(settings.bearer_token_file)
    return None


def registry_tls(settings: SchemaRegistrySettings) -> ssl.SSLContext | bool:
    """The TLS trust: the CA bundle of ``ca_file``, or the system's."""
    if settings.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(settings.ca_file))


class SchemaRegistryClient:
    """Talks to one registry; an async context manager (``aclose`` closes its HTTP client)."""

    def __init__(
        self,
        url: str,
        *,
        auth: httpx.Auth | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 5.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            auth=auth,
            verify=verify,
            timeout=timeout_s,
            transport=transport,
            headers={"Accept": CONTENT_TYPE},
            follow_redirects=False,
        )
        self._max_retries = max_retries
        self._backoff_s = retry_backoff_s
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self._by_id: dict[int, str] = {}

    @classmethod
    def from_settings(
        cls,
        settings: SchemaRegistrySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> SchemaRegistryClient:
        """The client of ``PA_SCHEMA_REGISTRY__*``; ``settings.url`` must be set."""
        if settings.url is None:
            raise ValueError("no registry URL is set")
        return cls(
            settings.url,
            auth=registry_auth(settings),
            verify=registry_tls(settings),
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            retry_backoff_s=settings.retry_backoff_s,
            transport=transport,
            sleep=sleep,
        )

    @property
    def where(self) -> str:
        """The registry's URL, fit to print."""
        return redact_url(self.url)

    async def __aenter__(self) -> SchemaRegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the API -------------------------------------------------------------------------

    def cached(self, schema_id: int) -> str | None:
        """The schema of ``schema_id`` if it was fetched before (no request)."""
        return self._by_id.get(schema_id)

    async def schema_by_id(self, schema_id: int) -> str:
        """The schema text registered under the global id ``schema_id``."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        body = await self._request("GET", f"/schemas/ids/{int(schema_id)}")
        schema = _field(body, "schema", str, f"schema id {schema_id}")
        if len(self._by_id) >= MAX_CACHED_SCHEMAS:
            self._by_id.pop(next(iter(self._by_id)))
        self._by_id[schema_id] = schema
        return schema

    async def register(self, subject: str, schema: str) -> int:
        """Register ``schema`` under ``subject`` (or find it there); its global id."""
        body = await self._request(
            "POST", f"/subjects/{_seg(subject)}/versions", {"schema": schema}
        )
        schema_id = _field(body, "id", int, f"registering under {subject}")
        self._by_id.setdefault(schema_id, schema)
        return schema_id

    async def lookup(self, subject: str, schema: str) -> int | None:
        """The id of ``schema`` if it is a version of ``subject``; None if it is not."""
        try:
            body = await self._request("POST", f"/subjects/{_seg(subject)}", {"schema": schema})
        except SchemaNotFound:
            return None
        schema_id = _field(body, "id", int, f"looking up under {subject}")
        self._by_id.setdefault(schema_id, schema)
        return schema_id

    async def latest(self, subject: str) -> RegisteredSchema | None:
        """The latest version of ``subject``; None when the subject does not exist."""
        try:
            return await self.version(subject, "latest")
        except SchemaNotFound:
            return None

    async def versions(self, subject: str) -> list[int]:
        """The version numbers of ``subject`` (empty when the subject does not exist)."""
        try:
            body = await self._request("GET", f"/subjects/{_seg(subject)}/versions")
        except SchemaNotFound:
            return []
        if not isinstance(body, list) or not all(isinstance(v, int) for v in body):
            raise RegistryError(f"the versions of {subject} are not a list of numbers")
        return list(body)

    async def version(self, subject: str, version: int | str) -> RegisteredSchema:
        """One version of ``subject`` (``"latest"`` for the latest)."""
        path = f"/subjects/{_seg(subject)}/versions/{_seg(str(version))}"
        body = await self._request("GET", path)
        where = f"{subject} version {version}"
        found = RegisteredSchema(
            _field(body, "id", int, where),
            _field(body, "version", int, where),
            _field(body, "schema", str, where),
        )
        self._by_id.setdefault(found.id, found.schema)
        return found

    async def is_compatible(self, subject: str, schema: str, version: str = "latest") -> bool:
        """Whether ``schema`` is compatible with ``version`` of ``subject`` under the
        subject's compatibility level; True when the subject has no version yet."""
        path = f"/compatibility/subjects/{_seg(subject)}/versions/{_seg(version)}"
        try:
            body = await self._request("POST", path, {"schema": schema})
        except SchemaNotFound:
            return True
        return _field(body, "is_compatible", bool, f"compatibility with {subject}")

    async def probe(self) -> int:
        """Ask for the subjects (one request, no retry); how many there are."""
        body = await self._request("GET", "/subjects", retries=0)
        if not isinstance(body, list):
            raise RegistryError("GET /subjects did not answer a list")
        return len(body)

    # -- transport -----------------------------------------------------------------------

    async def _request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, *, retries: int = -1
    ) -> Any:
        retries = self._max_retries if retries < 0 else retries
        what = f"{method} {path}"
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    path,
                    json=payload,
                    headers={"Content-Type": CONTENT_TYPE} if payload is not None else None,
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                floor = 0.0
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise RegistryError(
                            f"{what}: the answer is not JSON", status=response.status_code
                        ) from None
                status = response.status_code
                code, message = _error_of(response)
                if status != 429 and status < 500:
                    text = f"{what}: HTTP {status}" + (
                        f" (error {code}: {message})" if code else ""
                    )
                    if status == 404:
                        raise SchemaNotFound(text, status=status, code=code)
                    raise RegistryError(text, status=status, code=code)
                problem = f"HTTP {status}" + (f" ({message})" if message else "")
                floor = _retry_after(response)
            if attempt >= retries:
                raise RegistryUnavailable(
                    f"{what} at {self.where}: {problem} (after {attempt + 1} attempt(s))"
                )
            attempt += 1
            pause = max(floor, self._backoff_s * 2 ** (attempt - 1) * self._rng.uniform(0.5, 1))
            log.warning("registry.retry", request=what, attempt=attempt, error=problem)
            await self._sleep(pause)


def _seg(text: str) -> str:
    """One path segment, every reserved character escaped."""
    return quote(text, safe="")


def _field(body: Any, name: str, kind: type[T], where: str) -> T:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RegistryError(f"{where}: the answer has no {kind.__name__} {name!r}")
    return value


def _error_of(response: httpx.Response) -> tuple[int | None, str]:
    """The registry's ``error_code`` and ``message``, when the body holds them."""
    try:
        body = response.json()
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("error_code")
    message = body.get("message")
    return (
        code if isinstance(code, int) else None,
        message[:200] if isinstance(message, str) else "",
    )


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return 0.0
