"""The sandbox's https and its choice of signature methods: the flags, their checks, and the
server they make (the client's side of TLS: tests/integration/test_pas_tls.py)."""

from __future__ import annotations

import argparse
import re
import ssl
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.sandbox import SandboxConfig, SandboxSecurity, SandboxTls, run_sandbox
from pa_devkit.sandbox.cli_args import add_sandbox_arguments, config_from_arguments
from pa_devkit.tls import DevTlsSet, generate_dev_tls


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("tls-cli-keys"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> DevTlsSet:
    return generate_dev_tls(tmp_path_factory.mktemp("tls-cli"))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sandbox_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_flags_the_sandbox_is_plain_http_and_takes_both_methods(
    keyset: DevKeySet,
) -> None:
    """No --tls-* flag: plain http; with --keys-dir and no --signature-method, the gateway
    takes both of Mastercard's signature methods."""
    config = config_from_arguments(parse("--keys-dir", str(keyset.directory)))
    assert config.tls is None
    assert config.security is not None
    assert config.security.signature_methods == frozenset({"RSA-SHA256", "RSA-PSS"})


def test_tls_and_signature_flags_end_up_in_the_config(keyset: DevKeySet, tls: DevTlsSet) -> None:
    """--tls-cert, --tls-key and --tls-client-ca make the TLS config; --signature-method
    (repeatable) narrows the methods the gateway takes."""
    config = config_from_arguments(
        parse(
            "--keys-dir",
            str(keyset.directory),
            "--signature-method",
            "RSA-PSS",
            "--tls-cert",
            str(tls.server_certificate),
            "--tls-key",
            str(tls.server_key),
            "--tls-client-ca",
            str(tls.ca_certificate),
        )
    )
    assert config.tls == SandboxTls(tls.server_certificate, tls.server_key, tls.ca_certificate)
    assert config.security is not None
    assert config.security.signature_methods == frozenset({"RSA-PSS"})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-key", "KEY"), "--tls-cert and --tls-key go together"),
        (("--tls-cert", "CERT"), "--tls-cert and --tls-key go together"),
        (("--tls-client-ca", "CA"), "--tls-client-ca needs --tls-cert and --tls-key"),
        (("--tls-cert", "KEY", "--tls-key", "KEY"), "--tls-cert/--tls-key/--tls-client-ca: "),
        (("--tls-cert", "CERT", "--tls-key", "CERT"), "--tls-cert/--tls-key/--tls-client-ca: "),
        (
            ("--tls-cert", "CERT", "--tls-key", "KEY", "--tls-client-ca", "MISSING"),
            "TLS client CA",
        ),
        (("--signature-method", "RSA-PSS"), "--signature-method needs --keys-dir"),
    ],
    ids=["key-alone", "cert-alone", "ca-alone", "key-as-cert", "cert-as-key", "no-ca", "no-keys"],
)
def test_bad_tls_or_method_flags_are_clear_errors(
    tls: DevTlsSet, tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    """A flag without its partner, or a file OpenSSL cannot use, is refused before the
    sandbox starts, naming the flags."""
    files = {
        "CERT": str(tls.server_certificate),
        "KEY": str(tls.server_key),
        "CA": str(tls.ca_certificate),
        "MISSING": str(tmp_path / "absent.pem"),
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_arguments(parse(*(files.get(flag, flag) for flag in flags)))


def test_an_unknown_signature_method_is_refused_by_the_flags_and_the_config(
    keyset: DevKeySet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only RSA-SHA256 and RSA-PSS can be required, on the command line and in code."""
    with pytest.raises(SystemExit):
        parse("--keys-dir", str(keyset.directory), "--signature-method", "HMAC-SHA1")
    assert "invalid choice: 'HMAC-SHA1'" in capsys.readouterr().err
    bad: Any = ["HMAC-SHA1"]
    with pytest.raises(ValueError, match="signature_methods must be some of"):
        SandboxSecurity.from_keyset(keyset, "ck", signature_methods=bad)
    with pytest.raises(ValueError, match="signature_methods must be some of"):
        SandboxSecurity.from_keyset(keyset, "ck", signature_methods=[])


async def test_the_sandbox_serves_https_at_tls_12_or_later(tls: DevTlsSet) -> None:
    """With a TLS config the sandbox's base URL is https, its certificate verifies against
    the CA, and a client that tops out at TLS 1.1 gets no connection."""
    config = SandboxConfig(port=0, tls=SandboxTls(tls.server_certificate, tls.server_key))
    async with run_sandbox(config) as sandbox:
        assert sandbox.base_url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=tls.ca_certificate)
        async with httpx.AsyncClient(verify=trusting) as http:
            health = await http.get(f"{sandbox.base_url}/_sandbox/health")
            assert health.status_code == 200
            assert health.extensions["http_version"] == b"HTTP/1.1"
        old = ssl.create_default_context(cafile=tls.ca_certificate)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # Python warns that TLS 1.0 and 1.1 are deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        async with httpx.AsyncClient(verify=old) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{sandbox.base_url}/_sandbox/health")


async def test_a_client_ca_turns_on_mutual_tls(tls: DevTlsSet) -> None:
    """A client CA turns on mutual TLS: a client with a certificate from it is served, one
    without is not."""
    config = SandboxConfig(
        port=0, tls=SandboxTls(tls.server_certificate, tls.server_key, tls.ca_certificate)
    )
    async with run_sandbox(config) as sandbox:
        with_cert = ssl.create_default_context(cafile=tls.ca_certificate)
        with_cert.load_cert_chain(tls.client_certificate, tls.client_key)
        async with httpx.AsyncClient(verify=with_cert) as http:
            assert (await http.get(f"{sandbox.base_url}/_sandbox/health")).status_code == 200
        without = ssl.create_default_context(cafile=tls.ca_certificate)
        async with httpx.AsyncClient(verify=without) as http:
            with pytest.raises(httpx.TransportError):
                await http.get(f"{sandbox.base_url}/_sandbox/health")
