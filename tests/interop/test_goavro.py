"""Go producers: what linkedin/goavro computes for our schemas, and that the service reads it.

goavro's canonical form keeps a logical-typed primitive as ``{"type":"long"}``
(linkedin/goavro#174), so its single-object fingerprints differ from the standard ones. A
small Go program (``tests/interop/goavro``, goavro pinned in its go.mod and go.sum, fetched
from the Go module proxy) prints goavro's fingerprint and canonical form of every released
schema and a command it encoded with ``SingleFromNative``; the service's codec must compute
the same form in its ``goavro`` style and read the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.app import command_decoder
from service.codec.avro import AvroCodec
from service.codec.fingerprints import canonical_form, fingerprint
from service.codec.released import released_schemas
from service.domain.inbound import DecodedCommand

PROBE = Path(__file__).parent / "goavro"

pytestmark = pytest.mark.timeout(600)


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail under CI (where Go must be there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"goavro interop cannot run under CI: {reason}")
    pytest.skip(f"goavro interop not run: {reason}")


@pytest.fixture(scope="module")
def goavro_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    """{released file name: (fingerprint hex, canonical form, encoded command hex)}."""
    go = shutil.which("go")
    if go is None:
        unavailable("no go toolchain on PATH")
    assert go is not None
    work = tmp_path_factory.mktemp("goavro")
    for name in ("main.go", "go.mod", "go.sum"):
        shutil.copy(PROBE / name, work / name)
    shipped = released_schemas()
    paths = [
        str(PROBE.parents[2] / "schemas" / "released" / f"{s.stem}.v{s.version}.avsc")
        for s in shipped
    ]
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    try:
        done = subprocess.run(
            [go, "run", ".", *paths],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
            check=False,
        )
    except subprocess.TimeoutExpired:
        unavailable("go run took over 500 s (downloading goavro?)")
    if done.returncode != 0:
        unavailable(f"go run failed: {done.stderr.strip()[-500:]}")
    found: dict[str, tuple[str, str, str]] = {}
    for line in done.stdout.splitlines():
        path, rabin, canonical, encoded = line.split("\t")
        found[Path(path).name] = (rabin, canonical, encoded)
    assert len(found) == len(shipped)
    return found


def test_goavro_canonical_forms_and_fingerprints_are_ours_in_the_goavro_style(
    goavro_output: dict[str, tuple[str, str, str]],
) -> None:
    """For every released version, goavro's canonical form and fingerprint are exactly what
    service.codec.fingerprints computes in its goavro style (and not the standard ones)."""
    for item in released_schemas():
        rabin, canonical, _ = goavro_output[f"{item.stem}.v{item.version}.avsc"]
        assert canonical == canonical_form(item.raw, "goavro")
        assert rabin == fingerprint(item.raw, "goavro").hex()
        assert rabin != fingerprint(item.raw).hex()


@pytest.mark.parametrize("version", [1, 2])
def test_a_command_goavro_encoded_is_read_by_the_service(
    goavro_output: dict[str, tuple[str, str, str]], version: int
) -> None:
    """A command a Go service framed with goavro (its own fingerprint) decodes as the command
    it encoded, channel included from v2."""
    _, _, encoded = goavro_output[f"points_adjustment_requested.v{version}.avsc"]
    decoded = command_decoder(AvroCodec.from_directory())(bytes.fromhex(encoded))
    assert isinstance(decoded, DecodedCommand), decoded
    assert decoded.idempotency_key == "goavro-1"
    assert decoded.points_to_adjust == 250
    assert decoded.occurred_at == datetime(2025, 3, 4, 5, 6, 7, 891_000, tzinfo=UTC)
    assert decoded.channel == ("web" if version == 2 else None)
