"""The exceptions of ``pa_devkit.localinfra``: one base class, one subclass per server.

::

    LocalInfraError            a local server could not be found, started or stopped
    ├── LocalKafkaError        the broker, its jar cache or its command line
    ├── LocalPostgresError     the PostgreSQL server (postgres.py)
    ├── LocalRedisError        the Redis server (redis.py)
    └── LocalRegistryError     the Apicurio schema registry, its download (registry.py)

Every message says why; a failed start carries the tail of the server's log.
"""

from __future__ import annotations


class LocalInfraError(Exception):
    """A local server could not be found, started or stopped; the message says why."""


class LocalKafkaError(LocalInfraError):
    """The local broker could not be fetched, started or stopped; the message says why."""


class LocalPostgresError(LocalInfraError):
    """The local PostgreSQL server's binaries are missing, or it did not start or stop."""


class LocalRedisError(LocalInfraError):
    """The local Redis server's binary is missing, or it did not start or stop."""


class LocalRegistryError(LocalInfraError):
    """The local schema registry could not be downloaded, started or stopped."""
