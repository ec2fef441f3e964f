"""points-adjuster: applies points-adjustment commands from Kafka exactly once through PAS."""

__version__ = "0.1.0"
