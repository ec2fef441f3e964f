"""URLs made fit to print: credentials in the userinfo and secret-looking query parameters
replaced by ``***``.

A PAS base URL may carry a password (``https://user:secret@host/...``) or a key in its query
string; ``check`` prints the URL and the service logs it at start-up. :func:`redact_url` is
what they print instead, and :func:`redact_in_text` cleans an error message that may quote the
URL or pieces of it (an HTTP client's "invalid port" error, for instance).

Both work on the text alone, with no URL parser that could reject it: malformed input (an
unencoded ``/`` or ``#`` in a password, a broken IPv6 literal) still comes out with whatever
could be a credential hidden, and neither function ever raises.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

MASK = "***"

# Query (and fragment) parameters whose value is hidden: their name, lower-cased and split
# into words (on anything that is not a letter or digit, and at camelCase humps), holds one
# of these words...
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "apikey",
        "signature",
        "sig",
        "credential",
        "credentials",
    }
)
# ... or, written as one word, ends with one of these (``accesstoken``, ``clientsecret``).
SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "apikey", "signature")

_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter called ``name`` (raw or percent-encoded) looks secret."""
    decoded = unquote_plus(name, errors="replace")
    words = [word for word in _WORD_SPLIT.split(_HUMP.sub("_", decoded).lower()) if word]
    if any(word in SECRET_WORDS for word in words):
        return True
    return "".join(words).endswith(SECRET_SUFFIXES)


def redact_url(url: str) -> str:
    """``url`` with its userinfo password (``user:***@``), a user-only userinfo (``***@``)
    and the values of secret-looking query and fragment parameters replaced by ``***``;
    characters that are not printable are escaped, so the result stays on one line.

    Never raises: malformed input is rendered the same way, erring on the side of hiding.
    """
    rendered, _ = _redact(url if isinstance(url, str) else repr(url))
    return _printable(rendered)


def redact_in_text(text: str, url: str) -> str:
    """``text`` (say, an error message about ``url``) with ``url`` itself, and every secret
    :func:`redact_url` hides in it (also percent-decoded), replaced. Never raises."""
    text = text if isinstance(text, str) else repr(text)
    url = url if isinstance(url, str) else repr(url)
    rendered, secrets = _redact(url)
    if url:
        text = text.replace(url, rendered)
    variants = {form for secret in secrets for form in (secret, _decoded(secret)) if form}
    for secret in sorted(variants, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _printable(text)


def _redact(url: str) -> tuple[str, list[str]]:
    """The redacted rendering of ``url`` and the secrets it took out."""
    secrets: list[str] = []
    scheme_end = url.find("://")
    if scheme_end >= 0:
        head, rest = url[: scheme_end + 3], url[scheme_end + 3 :]
    elif url.startswith("//"):
        head, rest = "//", url[2:]
    else:
        head, rest = "", url
    authority_end = _first_of(rest, "/?#")
    authority, tail = rest[:authority_end], rest[authority_end:]
    at = authority.rfind("@")
    if at < 0 and (authority.endswith(":") or not _valid_port(authority)):
        # No userinfo where it belongs and a port that is empty or no number: most likely a
        # password with an unencoded "/", "?" or "#" in it. The last "@" anywhere ends the
        # userinfo (a path or query holding an "@" after such a port is hidden too).
        at = rest.rfind("@")
        if at >= 0:
            end = at + 1 + _first_of(rest[at + 1 :], "/?#")
            authority, tail = rest[:end], rest[end:]
    if at >= 0:
        userinfo, hostport = authority[:at], authority[at + 1 :]
        user, colon, password = userinfo.partition(":")
        if colon and password:
            secrets.append(password)
            shown_userinfo = f"{user}:{MASK}"
        else:
            secrets.append(userinfo)
            shown_userinfo = MASK
        authority = f"{shown_userinfo}@{_hostport(hostport, secrets)}"
    else:
        authority = _hostport(authority, secrets)
    return head + authority + _redact_tail(tail, secrets), secrets


def _hostport(hostport: str, secrets: list[str]) -> str:
    """``host:port`` as is, unless the port is not a number: then it is hidden too."""
    if _valid_port(hostport):
        return hostport
    colon = hostport.rfind(":")
    secrets.append(hostport[colon + 1 :])
    return f"{hostport[:colon]}:{MASK}"


def _valid_port(hostport: str) -> bool:
    """Whether ``hostport`` has no port, or a decimal one (IPv6 literals in brackets)."""
    after_host = hostport[hostport.rfind("]") + 1 :] if hostport.startswith("[") else hostport
    if ":" not in after_host:
        return True
    port = after_host[after_host.rfind(":") + 1 :]
    if not hostport.startswith("[") and after_host.count(":") > 1:
        return False
    return all("0" <= char <= "9" for char in port)


def _redact_tail(tail: str, secrets: list[str]) -> str:
    """The path as is; secret-looking parameters of the query and the fragment hidden."""
    fragment_at = tail.find("#")
    fragment = tail[fragment_at:] if fragment_at >= 0 else ""
    before = tail[:fragment_at] if fragment_at >= 0 else tail
    query_at = before.find("?")
    if query_at >= 0:
        before = before[: query_at + 1] + _redact_parameters(before[query_at + 1 :], secrets)
    if fragment:
        fragment = "#" + _redact_parameters(fragment[1:], secrets)
    return before + fragment


def _redact_parameters(text: str, secrets: list[str]) -> str:
    """``name=value`` pairs separated by ``&`` or ``;``, secret-looking values hidden."""
    parts = re.split(r"([&;])", text)
    for index, part in enumerate(parts):
        name, equals, value = part.partition("=")
        if equals and value and is_secret_name(name):
            secrets.append(value)
            parts[index] = f"{name}={MASK}"
    return "".join(parts)


def _first_of(text: str, characters: str) -> int:
    positions = [text.find(char) for char in characters if char in text]
    return min(positions, default=len(text))


def _decoded(text: str) -> str:
    return unquote_plus(text, errors="replace")


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
