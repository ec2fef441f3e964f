"""The processing core: commands, outcomes and the decision logic, free of Kafka and HTTP."""
