"""Real infrastructure for local runs and tests, started from plain files (no Docker engine).

``pa_devkit.localinfra.kafka`` runs a single-node KRaft Apache Kafka broker from Maven Central
jars; ``pa_devkit.localinfra.postgres`` and ``pa_devkit.localinfra.redis`` run the machine's
PostgreSQL and Redis servers on free loopback ports in temporary folders, and
``pa_devkit.localinfra.registry`` an Apicurio schema registry (Confluent-compatible API) from a
Maven Central download, through the process life shared in
``pa_devkit.localinfra.server_process``. This package deliberately re-exports
nothing, so ``python -m pa_devkit.localinfra.kafka`` does not import the module twice.
"""
