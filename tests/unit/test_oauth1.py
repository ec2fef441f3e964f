"""Mastercard OAuth 1.0a: base string, header, httpx Auth and the sandbox verifier."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pa_devkit.keys import generate_rsa_key
from pa_devkit.oauth1_verifier import (
    DEFAULT_NONCE_CACHE_SIZE,
    OAuth1Verifier,
    SignatureError,
    parse_authorization_header,
)
from service.security.oauth1 import (
    PSS_SALT_LENGTH,
    MastercardOAuth1Auth,
    OAuth1Signer,
    SignatureMethod,
    body_hash,
    make_nonce,
    signature_base_string,
)

CONSUMER_KEY = "ck!abc"
NONCE = "abcdEFGH12345678"
T0 = 1_700_000_000
URL = "https://Sandbox.API.Mastercard.com:443/loyalty/points-adjustments?b=2&a=1&a=0"
BODY = b'{"x":1}'
# Derived by hand from the rules in docs/pas.md, not by running the code under test.
EXPECTED_BASE_STRING = (
    "POST"
    "&https%3A%2F%2Fsandbox.api.mastercard.com%2Floyalty%2Fpoints-adjustments"
    "&a%3D0%26a%3D1%26b%3D2"
    "%26oauth_body_hash%3DUEG%2FH3E98gR4Q1PoL2pKU1kxy2Tx9LSlrq%2F8tyCRiyI%3D"
    "%26oauth_consumer_key%3Dck%21abc"
    "%26oauth_nonce%3DabcdEFGH12345678"
    "%26oauth_signature_method%3DRSA-SHA256"
    "%26oauth_timestamp%3D1700000000"
    "%26oauth_version%3D1.0"
)
PAS_URL = "https://sandbox.api.mastercard.com/loyalty/points-adjustments"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return generate_rsa_key()


class Clock:
    """A settable clock for the verifier."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counting_nonces() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"nonce{next(counter):011d}"


def make_signer(
    key: rsa.RSAPrivateKey, at: float = T0, consumer_key: str = CONSUMER_KEY
) -> OAuth1Signer:
    return OAuth1Signer(consumer_key, key, clock=lambda: at, nonce=counting_nonces())


def make_verifier(
    key: rsa.RSAPrivateKey, clock: Clock, *, nonce_cache_size: int = DEFAULT_NONCE_CACHE_SIZE
) -> OAuth1Verifier:
    return OAuth1Verifier(
        {CONSUMER_KEY: key.public_key()}, clock=clock, nonce_cache_size=nonce_cache_size
    )


def signed_headers(signer: OAuth1Signer, body: bytes = BODY, url: str = PAS_URL) -> dict[str, str]:
    return {"Authorization": signer.authorization_header("POST", url, body)}


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(SignatureError) as info:
        call()
    return info.value.reason


# --- base string and header ----------------------------------------------------------------


def test_empty_body_hash_is_the_documented_constant() -> None:
    """The body hash of an empty body is base64(SHA-256 of nothing), as PAS documents it."""
    assert body_hash(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_base_string_matches_hand_derived_value() -> None:
    """Method upper-cased, URL normalized, query + oauth params sorted and encoded once."""
    params = {
        "oauth_consumer_key": CONSUMER_KEY,
        "oauth_nonce": NONCE,
        "oauth_timestamp": str(T0),
        "oauth_signature_method": "RSA-SHA256",
        "oauth_version": "1.0",
    }
    assert signature_base_string("post", URL, BODY, params) == EXPECTED_BASE_STRING
    with_hash = {**params, "oauth_body_hash": body_hash(BODY), "oauth_signature": "ignored"}
    assert signature_base_string("POST", URL, BODY, with_hash) == EXPECTED_BASE_STRING


def test_base_string_refuses_a_body_hash_for_another_body() -> None:
    """A supplied oauth_body_hash that does not match the body is a caller error."""
    with pytest.raises(ValueError, match="body"):
        signature_base_string("POST", PAS_URL, BODY, {"oauth_body_hash": body_hash(b"")})


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://LOCALHOST:8080/x", "http%3A%2F%2Flocalhost%3A8080%2Fx"),
        ("http://h.example:80/x", "http%3A%2F%2Fh.example%2Fx"),
        ("https://h.example:8443/x", "https%3A%2F%2Fh.example%3A8443%2Fx"),
        ("https://h.example", "https%3A%2F%2Fh.example%2F"),
        ("HTTPS://user:pw@H.example/A/b#frag", "https%3A%2F%2Fh.example%2FA%2Fb"),
        ("http://[::1]:9000/p", "http%3A%2F%2F%5B%3A%3A1%5D%3A9000%2Fp"),
    ],
)
def test_url_normalization(url: str, normalized: str) -> None:
    """Scheme and host lower-cased, default port dropped, path kept, user info and fragment gone."""
    assert signature_base_string("GET", url, b"", {}).split("&")[1] == normalized


def test_escaped_query_is_re_escaped_canonically() -> None:
    """A query with percent-escapes enters the base string in canonical upper-case escapes."""
    url = PAS_URL + "-details?user_id=ab%2bc%2F%3D&user_id_type=RANAC"
    params = signature_base_string("GET", url, b"", {}).split("&")[2]
    assert params.startswith("oauth_body_hash%3D")
    assert "user_id%3Dab%252Bc%252F%253D%26user_id_type%3DRANAC" in params


def test_plain_query_enters_as_written() -> None:
    """Without percent-escapes the query values are used as they appear, '+' included."""
    params = signature_base_string("GET", PAS_URL + "?q=a+b&flag", b"", {}).split("&")[2]
    assert params.startswith("flag%3D%26")
    assert "q%3Da%2Bb" in params


def test_header_matches_hand_built_value(key: rsa.RSAPrivateKey) -> None:
    """The header lists the seven parameters in Mastercard's order, signature percent-encoded."""
    signer = OAuth1Signer(CONSUMER_KEY, key, clock=lambda: T0 + 0.9, nonce=lambda: NONCE)
    signature = key.sign(EXPECTED_BASE_STRING.encode(), padding.PKCS1v15(), hashes.SHA256())
    expected = (
        'OAuth oauth_consumer_key="ck!abc",oauth_nonce="abcdEFGH12345678",'
        'oauth_timestamp="1700000000",oauth_signature_method="RSA-SHA256",'
        'oauth_version="1.0",oauth_body_hash="UEG/H3E98gR4Q1PoL2pKU1kxy2Tx9LSlrq/8tyCRiyI=",'
        f'oauth_signature="{quote(base64.b64encode(signature).decode(), safe="")}"'
    )
    assert signer.authorization_header("POST", URL, BODY) == expected


def test_default_nonce_is_sixteen_alphanumerics() -> None:
    """The default nonce source yields 16 fresh alphanumerics."""
    nonces = {make_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 16 and n.isascii() and n.isalnum() for n in nonces)


def test_signer_refuses_header_breaking_consumer_key(key: rsa.RSAPrivateKey) -> None:
    """A consumer key with a quote or comma would corrupt the header and is refused."""
    with pytest.raises(ValueError, match="consumer_key"):
        OAuth1Signer('a"b', key)


# --- parsing -------------------------------------------------------------------------------


def test_parse_tolerates_spaces_and_any_order() -> None:
    """Parameters parse in any order with spaces around commas and equals signs."""
    parsed = parse_authorization_header(
        'oauth   oauth_nonce = "n1" ,oauth_signature="a%2Bb%3D",  oauth_version="1.0"'
    )
    assert parsed == {"oauth_nonce": "n1", "oauth_signature": "a+b=", "oauth_version": "1.0"}


@pytest.mark.parametrize(
    "value",
    [
        'Bearer oauth_nonce="n"',
        "OAuth ",
        "OAuth oauth_nonce=n",
        'OAuth oauth_nonce="n" oauth_version="1.0"',
        'OAuth oauth_nonce="a",oauth_nonce="b"',
    ],
)
def test_parse_rejects_malformed_headers(value: str) -> None:
    """Other schemes, unquoted, unseparated or repeated parameters are malformed."""
    assert reason_of(lambda: parse_authorization_header(value)) == "malformed_header"


# --- verification --------------------------------------------------------------------------


def test_verifier_accepts_a_signed_request(key: rsa.RSAPrivateKey) -> None:
    """A request signed with the registered key verifies and yields its consumer key."""
    verifier = make_verifier(key, Clock(T0))
    assert verifier.verify("POST", PAS_URL, signed_headers(make_signer(key)), BODY) == CONSUMER_KEY


def test_verifier_accepts_parameters_in_any_order(key: rsa.RSAPrivateKey) -> None:
    """Reordered, space-padded parameters still verify; the header name is case-insensitive."""
    header = make_signer(key).authorization_header("POST", PAS_URL, BODY)
    params = parse_authorization_header(header)
    params["oauth_signature"] = quote(params["oauth_signature"], safe="")
    shuffled = "OAuth  " + " , ".join(f'{k} = "{v}"' for k, v in reversed(params.items()))
    verifier = make_verifier(key, Clock(T0))
    assert verifier.verify("POST", PAS_URL, {"authorization": shuffled}, BODY) == CONSUMER_KEY


def test_verifier_accepts_a_query_and_empty_body(key: rsa.RSAPrivateKey) -> None:
    """A GET with an escaped query and no body verifies against the same URL."""
    url = PAS_URL + "-details?user_id=ab%2Bc&user_id_type=RANAC"
    headers = {"Authorization": make_signer(key).authorization_header("GET", url, b"")}
    assert make_verifier(key, Clock(T0)).verify("GET", url, headers, b"") == CONSUMER_KEY


def test_verifier_rejects_tampered_body(key: rsa.RSAPrivateKey) -> None:
    """Changing one byte of the body fails the body hash check."""
    verifier = make_verifier(key, Clock(T0))
    headers = signed_headers(make_signer(key))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, headers, b'{"x":2}')) == (
        "body_hash_mismatch"
    )


def test_verifier_rejects_signature_by_another_key(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    """A request signed with a key other than the registered one has a bad signature."""
    verifier = make_verifier(key, Clock(T0))
    headers = signed_headers(make_signer(other_key))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, headers, BODY)) == "bad_signature"


def test_verifier_rejects_another_url(key: rsa.RSAPrivateKey) -> None:
    """The signature covers the URL: a request replayed to another path fails."""
    verifier = make_verifier(key, Clock(T0))
    headers = signed_headers(make_signer(key))
    other = PAS_URL + "-details"
    assert reason_of(lambda: verifier.verify("POST", other, headers, BODY)) == "bad_signature"


def test_verifier_rejects_stale_and_future_timestamps(key: rsa.RSAPrivateKey) -> None:
    """Timestamps more than the allowed skew behind or ahead of the clock are refused."""
    clock = Clock(T0 + 301)
    verifier = make_verifier(key, clock)
    signer = make_signer(key)
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, signed_headers(signer), BODY)) == (
        "stale_timestamp"
    )
    clock.now = T0 - 301
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, signed_headers(signer), BODY)) == (
        "future_timestamp"
    )
    clock.now = T0 + 300
    assert verifier.verify("POST", PAS_URL, signed_headers(signer), BODY) == CONSUMER_KEY


def test_verifier_rejects_replayed_nonce(key: rsa.RSAPrivateKey) -> None:
    """The same signed request presented twice is refused the second time."""
    verifier = make_verifier(key, Clock(T0))
    headers = signed_headers(make_signer(key))
    verifier.verify("POST", PAS_URL, headers, BODY)
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, headers, BODY)) == "replayed_nonce"


def test_nonce_is_forgotten_once_its_window_has_passed(key: rsa.RSAPrivateKey) -> None:
    """A nonce may come back once its first use lies outside the skew window."""
    clock = Clock(T0)
    verifier = make_verifier(key, clock)
    first = OAuth1Signer(CONSUMER_KEY, key, clock=lambda: T0, nonce=lambda: NONCE)
    verifier.verify("POST", PAS_URL, signed_headers(first), BODY)
    clock.now = T0 + 400
    later = OAuth1Signer(CONSUMER_KEY, key, clock=lambda: T0 + 400, nonce=lambda: NONCE)
    assert verifier.verify("POST", PAS_URL, signed_headers(later), BODY) == CONSUMER_KEY


def test_full_nonce_cache_refuses_rather_than_forgets(key: rsa.RSAPrivateKey) -> None:
    """When the bounded cache drops a live nonce, a replay of it is still refused."""
    verifier = make_verifier(key, Clock(T0 + 10), nonce_cache_size=1)
    old = signed_headers(make_signer(key, at=T0))
    verifier.verify("POST", PAS_URL, old, BODY)
    newer = OAuth1Signer(CONSUMER_KEY, key, clock=lambda: T0 + 5, nonce=lambda: "anotherNonce0001")
    verifier.verify("POST", PAS_URL, signed_headers(newer), BODY)
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, old, BODY)) == "stale_timestamp"


def test_nonce_caches_are_per_consumer_key(key: rsa.RSAPrivateKey) -> None:
    """Two consumers may use the same nonce."""
    verifier = OAuth1Verifier(
        {CONSUMER_KEY: key.public_key(), "second": key.public_key()}, clock=Clock(T0)
    )
    for consumer in (CONSUMER_KEY, "second"):
        signer = OAuth1Signer(consumer, key, clock=lambda: T0, nonce=lambda: NONCE)
        assert verifier.verify("POST", PAS_URL, signed_headers(signer), BODY) == consumer


def test_verifier_rejects_unknown_consumer_key(key: rsa.RSAPrivateKey) -> None:
    """A consumer key without a registered public key is refused."""
    verifier = make_verifier(key, Clock(T0))
    headers = signed_headers(make_signer(key, consumer_key="someone-else"))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, headers, BODY)) == (
        "unknown_consumer_key"
    )


def test_verifier_rejects_missing_header(key: rsa.RSAPrivateKey) -> None:
    """A request without an Authorization header is refused as such."""
    verifier = make_verifier(key, Clock(T0))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, {}, BODY)) == "missing_header"


@pytest.mark.parametrize(
    ("param", "value", "reason"),
    [
        ("oauth_signature_method", "RSA-PSS", "bad_signature"),
        ("oauth_signature_method", "HMAC-SHA1", "unsupported_signature_method"),
        ("oauth_signature_method", "rsa-sha256", "unsupported_signature_method"),
        ("oauth_signature_method", "RSA-SHA512", "unsupported_signature_method"),
        ("oauth_version", "2.0", "unsupported_version"),
        ("oauth_timestamp", "17e8", "malformed_header"),
        ("oauth_nonce", "", "malformed_header"),
        ("oauth_signature", "not*base64", "bad_signature"),
    ],
)
def test_verifier_rejects_bad_parameters(
    key: rsa.RSAPrivateKey, param: str, value: str, reason: str
) -> None:
    """Wrong method or version, a non-integer timestamp, an empty nonce each have their reason;
    the other known method on a signature made with the first does not verify."""
    params = parse_authorization_header(
        make_signer(key).authorization_header("POST", PAS_URL, BODY)
    )
    params[param] = value
    header = "OAuth " + ",".join(f'{k}="{v}"' for k, v in params.items())
    verifier = make_verifier(key, Clock(T0))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, {"Authorization": header}, BODY)) == (
        reason
    )


# --- RSA-PSS -------------------------------------------------------------------------------


def pss_signer(key: rsa.RSAPrivateKey, nonce: str = NONCE) -> OAuth1Signer:
    return OAuth1Signer(
        CONSUMER_KEY, key, signature_method="RSA-PSS", clock=lambda: T0, nonce=lambda: nonce
    )


def test_pss_signature_is_pss_sha256_salt_32_over_the_same_base_string(
    key: rsa.RSAPrivateKey,
) -> None:
    """With RSA-PSS the header names the method, and the signature verifies as PSS with
    SHA-256, MGF1-SHA-256 and exactly 32 bytes of salt over the base string that names it
    (a verifier that demands another salt length refuses it)."""
    params = pss_signer(key).oauth_params("POST", URL, BODY)
    assert params["oauth_signature_method"] == "RSA-PSS"
    base = signature_base_string("POST", URL, BODY, params).encode()
    assert b"oauth_signature_method%3DRSA-PSS" in base
    signature = base64.b64decode(params["oauth_signature"])
    mgf = padding.MGF1(hashes.SHA256())
    assert PSS_SALT_LENGTH == 32
    key.public_key().verify(signature, base, padding.PSS(mgf, 32), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, base, padding.PSS(mgf, 20), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, base, padding.PKCS1v15(), hashes.SHA256())


def test_pss_signatures_are_randomized_but_the_rest_of_the_header_is_not(
    key: rsa.RSAPrivateKey,
) -> None:
    """Two PSS signatures of the same request differ (the salt is random); every other
    parameter is the same, as with RSA-SHA256."""
    first = parse_authorization_header(pss_signer(key).authorization_header("POST", URL, BODY))
    second = parse_authorization_header(pss_signer(key).authorization_header("POST", URL, BODY))
    assert first.pop("oauth_signature") != second.pop("oauth_signature")
    assert first == second


@pytest.mark.parametrize("method", ["RSA-SHA256", "RSA-PSS"])
def test_verifier_accepts_both_methods_by_default(
    key: rsa.RSAPrivateKey, method: SignatureMethod
) -> None:
    """The sandbox's verifier accepts either of Mastercard's signature methods."""
    signer = OAuth1Signer(
        CONSUMER_KEY, key, signature_method=method, clock=lambda: T0, nonce=lambda: NONCE
    )
    verifier = make_verifier(key, Clock(T0))
    assert verifier.verify("POST", PAS_URL, signed_headers(signer), BODY) == CONSUMER_KEY


def test_verifier_told_one_method_refuses_the_other(key: rsa.RSAPrivateKey) -> None:
    """A verifier configured for RSA-PSS only refuses an RSA-SHA256 request (and the other
    way round) as unsupported_signature_method, naming what it expects."""
    pss_only = OAuth1Verifier(
        {CONSUMER_KEY: key.public_key()}, clock=Clock(T0), signature_methods=["RSA-PSS"]
    )
    with pytest.raises(SignatureError) as refused:
        pss_only.verify("POST", PAS_URL, signed_headers(make_signer(key)), BODY)
    assert (refused.value.reason, refused.value.detail) == (
        "unsupported_signature_method",
        "expected RSA-PSS",
    )
    assert pss_only.verify("POST", PAS_URL, signed_headers(pss_signer(key)), BODY) == CONSUMER_KEY
    v15_only = OAuth1Verifier(
        {CONSUMER_KEY: key.public_key()}, clock=Clock(T0), signature_methods=["RSA-SHA256"]
    )
    headers = signed_headers(pss_signer(key, nonce="another-nonce-16"))
    assert reason_of(lambda: v15_only.verify("POST", PAS_URL, headers, BODY)) == (
        "unsupported_signature_method"
    )


def test_verifier_refuses_a_pss_signature_with_another_salt_length(
    key: rsa.RSAPrivateKey,
) -> None:
    """A PSS signature with the maximum salt length (what some generic signers use) over the
    right base string is a bad_signature: the gateway's salt length is 32."""
    params = pss_signer(key).oauth_params("POST", PAS_URL, BODY)
    base = signature_base_string("POST", PAS_URL, BODY, params).encode()
    long_salt = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)
    params["oauth_signature"] = quote(
        base64.b64encode(key.sign(base, long_salt, hashes.SHA256())).decode(), safe=""
    )
    header = "OAuth " + ",".join(f'{k}="{v}"' for k, v in params.items())
    verifier = make_verifier(key, Clock(T0))
    assert reason_of(lambda: verifier.verify("POST", PAS_URL, {"Authorization": header}, BODY)) == (
        "bad_signature"
    )


@pytest.mark.parametrize("methods", [[], ["HMAC-SHA1"], ["RSA-PSS", "PLAINTEXT"]])
def test_verifier_refuses_to_be_built_with_unknown_methods(
    key: rsa.RSAPrivateKey, methods: list[str]
) -> None:
    """Only Mastercard's two methods can be configured, and at least one."""
    with pytest.raises(ValueError, match="signature_methods must be some of"):
        OAuth1Verifier({CONSUMER_KEY: key.public_key()}, signature_methods=methods)  # type: ignore[arg-type]


def test_signer_refuses_an_unknown_method(key: rsa.RSAPrivateKey) -> None:
    """A signature method the gateway does not know is refused when the signer is built."""
    with pytest.raises(ValueError, match="unknown signature method"):
        OAuth1Signer(CONSUMER_KEY, key, signature_method="HMAC-SHA1")  # type: ignore[arg-type]


# --- httpx ---------------------------------------------------------------------------------


async def test_httpx_auth_signs_what_is_sent(key: rsa.RSAPrivateKey) -> None:
    """Through MockTransport, the Auth signs the exact body and URL and the verifier accepts it."""
    verifier = make_verifier(key, Clock(T0))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        consumer = verifier.verify(
            request.method, str(request.url), request.headers, request.content
        )
        return httpx.Response(200, json={"consumer": consumer})

    auth = MastercardOAuth1Auth(make_signer(key))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.post(
            PAS_URL, content=BODY, headers={"Content-Type": "application/json"}
        )
        assert response.json() == {"consumer": CONSUMER_KEY}
        history = await client.get(
            PAS_URL + "-details", params={"user_id": "a+b/c", "user_id_type": "RANAC"}
        )
        assert history.status_code == 200
    assert len(seen) == 2
    assert seen[0].startswith('OAuth oauth_consumer_key="ck!abc",')


def test_httpx_auth_works_with_the_sync_client(key: rsa.RSAPrivateKey) -> None:
    """The same Auth signs requests of the synchronous client."""
    verifier = make_verifier(key, Clock(T0))

    def handler(request: httpx.Request) -> httpx.Response:
        verifier.verify(request.method, str(request.url), request.headers, request.content)
        return httpx.Response(204)

    auth = MastercardOAuth1Auth(make_signer(key))
    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client:
        assert client.post(PAS_URL, json={"x": 1}).status_code == 204
