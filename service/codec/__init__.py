"""Avro encoding of commands and outcome events."""
