"""The PAS client: one pooled httpx client speaking the contract in docs/pas.md."""
