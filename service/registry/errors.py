"""What can go wrong talking to a schema registry.

RegistryError          the registry refused or could not answer a request (``status``, the
│                      registry's ``error_code`` when it gave one); not retriable
├── SchemaNotFound     it has no such schema, subject or version (404: 40401, 40402, 40403)
└── RegistryUnavailable  no usable answer after the retries: connection refused or reset,
                       timeout, 5xx, 429; retriable (try again later)

Messages name the request (method and path, never credentials) and what came back.
"""

from __future__ import annotations

from service.errors import PointsAdjusterError


class RegistryError(PointsAdjusterError):
    """The registry refused a request, or answered something that is not its API's shape."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SchemaNotFound(RegistryError):  # noqa: N818 (the name the issue gave it)
    """No such schema id, subject, or version (HTTP 404)."""


class RegistryUnavailable(RegistryError):  # noqa: N818 (the name the issue gave it)
    """The registry could not be reached or kept failing for a transient reason."""

    retriable = True
