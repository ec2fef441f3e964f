"""redact_url and redact_in_text: URLs printed without their credentials."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.redact import MASK, is_secret_name, redact_in_text, redact_url


def test_a_userinfo_password_is_replaced_and_the_user_kept() -> None:
    """The password of user:password@ becomes *** and the rest of the URL is unchanged."""
    assert (
        redact_url("https://svc-user:s3cr%2Ft@api.example.com:8443/loyalty")
        == "https://svc-user:***@api.example.com:8443/loyalty"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://AKIA1234SECRET@api.example.com/x", "https://***@api.example.com/x"),
        ("https://user:@host/x", "https://***@host/x"),
        ("https://@host", "https://***@host"),
    ],
)
def test_a_user_only_userinfo_is_replaced_whole(url: str, expected: str) -> None:
    """A userinfo without a password (it may be a key on its own) is hidden entirely."""
    assert redact_url(url) == expected


def test_secret_looking_query_parameters_are_hidden_case_insensitively() -> None:
    """Values of parameters named like passwords, tokens, keys and signatures become ***;
    other parameters and the order are kept."""
    url = (
        "https://host/p?Password=a1&pass=a2&PWD=a3&secret=a4&token=a5&key=a6&apikey=a7"
        "&API_KEY=a8&access_token=a9&Signature=b1&page=2&clientSecret=b2&X-Amz-Signature=b3"
        "&monkey=banana&bypass=yes"
    )
    assert redact_url(url) == (
        "https://host/p?Password=***&pass=***&PWD=***&secret=***&token=***&key=***&apikey=***"
        "&API_KEY=***&access_token=***&Signature=***&page=2&clientSecret=***"
        "&X-Amz-Signature=***&monkey=banana&bypass=yes"
    )


def test_fragment_parameters_and_both_credentials_at_once_are_hidden() -> None:
    """A URL with a password, a secret query parameter and a token in the fragment shows
    none of them."""
    shown = redact_url("https://u:pw1@h/p?x=1;api-key=k2#access_token=t3&state=s")
    assert shown == "https://u:***@h/p?x=1;api-key=***#access_token=***&state=s"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081",
        "https://api.mastercard.com/loyalty/points-adjustments",
        "https://[::1]:8443/a?page=2#top",
        "https://host/users/joe@example.com",
        "",
    ],
)
def test_a_url_without_credentials_is_unchanged(url: str) -> None:
    """A URL with no userinfo and no secret parameter comes back exactly as given."""
    assert redact_url(url) == url


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("https://user:p/ss@host/x", "p/ss"),
        ("https://user:p#ss@host", "p#ss"),
        ("https://user:p?ss@host", "p?ss"),
        ("https://user:p@ss@host/x", "p@ss"),
        ("https://host:notaport/x", "notaport"),
        ("user:hunter2@host", "hunter2"),
        ("//user:hunter2@host", "hunter2"),
        ("https://[::1:8080/x?token=tok1", "tok1"),
        ("https://u:pw\n@host", "pw\n"),
    ],
)
def test_malformed_urls_are_rendered_without_their_secret(url: str, hidden: str) -> None:
    """Malformed URLs (unencoded separators in a password, a broken IPv6 literal, no scheme)
    never raise and never show what could be the password."""
    shown = redact_url(url)
    assert hidden not in shown
    assert MASK in shown


def test_control_characters_are_escaped_onto_one_line() -> None:
    """A URL with a newline in it is rendered on one line, the newline escaped."""
    assert redact_url("https://host/a\nb") == "https://host/a\\nb"


@given(st.text())
def test_redact_url_never_raises(url: str) -> None:
    """Whatever text is given, redact_url returns one printable line."""
    shown = redact_url(url)
    assert shown.isprintable()


@given(user=st.text("abc", min_size=1), password=st.text("xyz%:/", min_size=3))
def test_a_generated_password_never_survives(user: str, password: str) -> None:
    """For any user and any password (separators included), the password is not shown."""
    shown = redact_url(f"https://{user}:{password}@host.example/x")
    assert f":{password}@" not in shown
    assert "host.example" in shown


def test_an_error_message_loses_the_url_and_its_secrets() -> None:
    """redact_in_text replaces the URL, and the password (also percent-decoded) and secret
    values quoted on their own, in an error message."""
    url = "https://svc:p%40ss@host/x?token=abc123"
    message = f"cannot reach {url}: invalid password 'p@ss', token abc123 refused"
    cleaned = redact_in_text(message, url)
    assert "p@ss" not in cleaned
    assert "p%40ss" not in cleaned
    assert "abc123" not in cleaned
    assert "https://svc:***@host/x?token=***" in cleaned


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("refresh_token", True),
        ("accessToken", True),
        ("x%2Dapi%2Dkey", True),
        ("sig", True),
        ("page", False),
        ("keyword", False),
        ("monkey", False),
    ],
)
def test_secret_names_are_told_by_their_words(name: str, secret: bool) -> None:
    """A parameter name looks secret when one of its words (or its end, written as one
    word) is a secret word; words merely containing one do not."""
    assert is_secret_name(name) is secret
