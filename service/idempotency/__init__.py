"""Idempotency records: one per idempotency key, claimed before PAS is called."""
