"""Kafka adapters: the command consumer loop, the outcome publisher, topic administration."""
