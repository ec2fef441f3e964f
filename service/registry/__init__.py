"""A schema registry client speaking the Confluent REST API (``client``), and its errors."""
