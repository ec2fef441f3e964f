"""Shared test configuration: the real-broker fixtures live in tests/kafka_support.py."""

pytest_plugins = ["tests.kafka_support"]
