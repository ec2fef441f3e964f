"""Key handling, OAuth 1.0a request signing and JWE payload encryption for the PAS contract.

Modules:

- ``errors``: the exception tree (``SecurityError`` and its reason-coded subclasses).
- ``keys``: loading keys and certificates, ``kid`` fingerprints, expiry checks, dev key sets.
- ``oauth1``: Mastercard's OAuth 1.0a variant, client (signer, ``httpx.Auth``) and server
  (verifier, for the sandbox).
- ``jwe``: compact JWE (RSA-OAEP-256 + A256GCM) encryption and strict decryption.
"""
