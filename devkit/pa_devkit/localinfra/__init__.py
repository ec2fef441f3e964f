"""Real infrastructure for local runs and tests, started from plain files (no Docker engine).

``pa_devkit.localinfra.kafka`` runs a single-node KRaft Apache Kafka broker from Maven Central
jars. This package deliberately re-exports nothing, so ``python -m pa_devkit.localinfra.kafka``
does not import the module twice.
"""
