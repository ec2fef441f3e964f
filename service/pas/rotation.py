"""Rotating the PAS credentials while the service runs (docs/pas.md, "Rotating keys").

``CredentialStore`` holds the credentials in force. ``reload()`` reads the same files again
(the same settings and paths), checks them as start-up does (``load_credentials``) and swaps
them in one assignment; when anything is wrong it keeps the ones in force and logs one error
naming the setting and the file, never a secret. A call takes one snapshot of the
credentials when it starts (``current``) and signs and encrypts with it, so a call in flight
during a swap finishes with what it started with.

Answers are decrypted with the current decryption key first, then with the one it replaced
(``keep_previous`` of them, 1 by default): PAS may still answer a call, or a whole window of
calls, with the key registered before the switch. A JWE answer carries the ``kid`` of the
certificate it was encrypted to, but the decryption key may come without its certificate,
so the keys are tried in order rather than chosen by ``kid``; a wrong key fails at the
RSA-OAEP unwrap, before any content is touched.

``watch_credentials`` is the trigger: a SIGHUP (``requested``) reloads at once, and the
credential files are polled every ``poll_s`` seconds for a change of (mtime, size, inode) of
the path they resolve to, which catches a Kubernetes Secret's symlink swap as well as a file
written in place.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from service.errors import StartupError
from service.pas.credentials import Credentials, load_credentials
from service.security.errors import DecryptionError
from service.security.jwe import JweDecrypter
from service.settings import PasSettings

log = structlog.get_logger("service.pas.rotation")

KEEP_PREVIOUS = 1
"""How many replaced decryption keys still decrypt answers after a rotation."""

Trigger = Literal["signal", "files_changed", "manual"]


@dataclass(frozen=True)
class _State:
    credentials: Credentials
    decrypters: tuple[JweDecrypter, ...]
    """The current decryption key's first, then the replaced ones, newest first."""
    fingerprints: tuple[str, ...]
    """The decryption keys' fingerprints, in the same order."""


class CredentialStore:
    """The PAS credentials in force, swapped whole by ``reload()``.

    ``on_reload`` is called with the new credentials after each successful swap (the app
    refreshes the certificate expiry gauge with it).
    """

    def __init__(
        self,
        settings: PasSettings,
        credentials: Credentials,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        keep_previous: int = KEEP_PREVIOUS,
        on_reload: Callable[[Credentials], None] | None = None,
    ) -> None:
        if keep_previous < 0:
            raise ValueError("keep_previous must not be negative")
        self._settings = settings
        self._clock = clock
        self._keep_previous = keep_previous
        self._on_reload = on_reload
        self._state = _State(
            credentials, (credentials.decrypter,), (credentials.decryption_fingerprint,)
        )

    @property
    def current(self) -> Credentials:
        """The credentials in force: take it once per call and use that one throughout."""
        return self._state.credentials

    @property
    def decryption_keys(self) -> int:
        """How many decryption keys answers are tried with (the current one and older)."""
        return len(self._state.decrypters)

    def decrypt(self, compact: str) -> bytes:
        """The plaintext of an answer's JWE, with the current decryption key or, failing
        that, a replaced one; the current key's ``DecryptionError`` when none can."""
        first: DecryptionError | None = None
        for decrypter in self._state.decrypters:
            try:
                return decrypter.decrypt(compact)
            except DecryptionError as exc:
                first = first or exc
        assert first is not None  # there is always a current key
        raise first

    def reload(self, trigger: Trigger = "manual") -> bool:
        """Read and check the credential files again and swap them in; ``False`` (the old
        ones kept, one error logged) when they cannot be loaded."""
        try:
            fresh = load_credentials(self._settings, now=self._clock())
        except StartupError as exc:  # names the setting and the file, never key material
            log.error("credentials.reload_failed", trigger=trigger, error=str(exc))
            return False
        except Exception as exc:  # an unexpected failure: its type only, not its text
            log.error("credentials.reload_failed", trigger=trigger, error=type(exc).__name__)
            return False
        old = self._state
        if fresh.decryption_fingerprint == old.fingerprints[0]:
            decrypters = (fresh.decrypter, *old.decrypters[1:])
            fingerprints = old.fingerprints
        else:
            keep = 1 + self._keep_previous
            decrypters = (fresh.decrypter, *old.decrypters)[:keep]
            fingerprints = (fresh.decryption_fingerprint, *old.fingerprints)[:keep]
        self._state = _State(fresh, decrypters, fingerprints)  # the one swap
        before = old.credentials.fingerprints
        after = fresh.fingerprints
        log.info(
            "credentials.reloaded",
            trigger=trigger,
            changed=sorted(name for name, value in after.items() if before[name] != value),
            previous_decryption_keys=len(decrypters) - 1,
            **after,
        )
        for warning in fresh.warnings:
            log.warning("credentials.expiring", detail=warning)
        if self._on_reload is not None:
            self._on_reload(fresh)
        return True


def credential_files(settings: PasSettings) -> tuple[Path, ...]:
    """Every file ``load_credentials`` reads under ``settings``."""
    candidates = (
        settings.signing_key_path,
        settings.encryption_certificate_path,
        settings.decryption_key_path,
        settings.decryption_certificate_path,
        settings.consumer_key_file,
        settings.signing_key_password_file,
        settings.decryption_key_password_file,
    )
    return tuple(path for path in candidates if path is not None)


FileSignature = tuple[tuple[int, int, int] | None, ...]


def file_signature(paths: tuple[Path, ...]) -> FileSignature:
    """(mtime, size, inode) of the file each path resolves to now; ``None`` for one that
    cannot be read. ``os.stat`` follows symlinks, so a Secret's swapped link counts."""
    signature: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:
            signature.append(None)
            continue
        signature.append((found.st_mtime_ns, found.st_size, found.st_ino))
    return tuple(signature)


async def watch_credentials(
    store: CredentialStore,
    settings: PasSettings,
    requested: asyncio.Event,
    stop: asyncio.Event,
    *,
    poll_s: float,
) -> None:
    """Reload when ``requested`` is set (SIGHUP) and, with ``poll_s`` > 0, when a credential
    file changes; until ``stop`` is set."""
    paths = credential_files(settings)
    seen = file_signature(paths)
    while not stop.is_set():
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(requested.wait())]
        try:
            await asyncio.wait(
                waits, timeout=poll_s if poll_s > 0 else None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
        if stop.is_set():
            return
        if requested.is_set():
            requested.clear()
            seen = file_signature(paths)
            store.reload("signal")
            continue
        now = file_signature(paths)
        if now != seen:
            seen = now
            store.reload("files_changed")
