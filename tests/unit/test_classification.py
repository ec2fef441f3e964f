"""The classification table: every row of the module docstring, first-match order, fallback."""

from __future__ import annotations

import pytest

from service.domain.classification import (
    ANSWER_LOST,
    NOT_SENT,
    RULES,
    Action,
    Observation,
    Transport,
    classify,
)
from service.domain.outcome import Reason

RETRY, UNKNOWN, APPLIED = Action.RETRY, Action.UNKNOWN, Action.APPLIED
PERMANENT, DEAD_LETTER = Action.PERMANENT, Action.DEAD_LETTER


def status(code: int, *, recoverable: bool = False) -> Observation:
    return Observation(status=code, recoverable=recoverable)


def transport(kind: Transport) -> Observation:
    return Observation(transport=kind)


# -- the table, row by row -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [Transport.CONNECT, Transport.CONNECT_TIMEOUT, Transport.POOL_TIMEOUT]
)
def test_a_request_that_never_left_is_retried_as_unavailable(kind: Transport) -> None:
    """Connect refused, connect timeout and a full pool are RETRY with PAS_UNAVAILABLE."""
    rule = classify(transport(kind))
    assert (rule.action, rule.reason) == (RETRY, Reason.PAS_UNAVAILABLE)


def test_an_open_circuit_is_retried_as_unavailable() -> None:
    """The circuit breaker refusing the call (nothing sent) is RETRY with PAS_UNAVAILABLE."""
    rule = classify(transport(Transport.CIRCUIT_OPEN))
    assert (rule.action, rule.reason) == (RETRY, Reason.PAS_UNAVAILABLE)


@pytest.mark.parametrize(
    "kind",
    [Transport.READ_TIMEOUT, Transport.WRITE_TIMEOUT, Transport.RESET, Transport.PROTOCOL],
)
def test_a_lost_answer_is_an_unknown_outcome(kind: Transport) -> None:
    """Read/write timeouts, resets and protocol errors are UNKNOWN with OUTCOME_UNKNOWN."""
    rule = classify(transport(kind))
    assert (rule.action, rule.reason) == (UNKNOWN, Reason.OUTCOME_UNKNOWN)


def test_an_unreadable_200_is_an_unknown_outcome() -> None:
    """A 200 whose body cannot be read is UNKNOWN with OUTCOME_UNKNOWN, never APPLIED."""
    rule = classify(transport(Transport.UNREADABLE_ANSWER))
    assert (rule.action, rule.reason) == (UNKNOWN, Reason.OUTCOME_UNKNOWN)


def test_200_is_applied_without_a_reason() -> None:
    """A readable 200 is APPLIED and carries no failure reason."""
    rule = classify(status(200))
    assert (rule.action, rule.reason) == (APPLIED, None)


@pytest.mark.parametrize("recoverable", [False, True])
def test_429_is_retried_as_unavailable(recoverable: bool) -> None:
    """A 429 is RETRY with PAS_UNAVAILABLE, with or without a Recoverable envelope."""
    rule = classify(status(429, recoverable=recoverable))
    assert (rule.action, rule.reason) == (RETRY, Reason.PAS_UNAVAILABLE)


@pytest.mark.parametrize("code", [401, 403])
@pytest.mark.parametrize("recoverable", [False, True])
def test_refused_credentials_are_dead_lettered_as_unauthorized(
    code: int, recoverable: bool
) -> None:
    """401 and 403 are DEAD_LETTER with UNAUTHORIZED, even when marked Recoverable."""
    rule = classify(status(code, recoverable=recoverable))
    assert (rule.action, rule.reason) == (DEAD_LETTER, Reason.UNAUTHORIZED)


@pytest.mark.parametrize("recoverable", [False, True])
def test_404_is_a_permanent_account_not_found(recoverable: bool) -> None:
    """A 404 is PERMANENT with ACCOUNT_NOT_FOUND; Recoverable does not make it a retry."""
    rule = classify(status(404, recoverable=recoverable))
    assert (rule.action, rule.reason) == (PERMANENT, Reason.ACCOUNT_NOT_FOUND)


@pytest.mark.parametrize("code", [400, 402, 405, 409, 422, 499])
def test_other_4xx_marked_recoverable_is_retried(code: int) -> None:
    """Any other 4xx whose envelope says Recoverable is RETRY with PAS_UNAVAILABLE."""
    rule = classify(status(code, recoverable=True))
    assert (rule.action, rule.reason) == (RETRY, Reason.PAS_UNAVAILABLE)


@pytest.mark.parametrize("code", [400, 402, 405, 409, 422, 499])
def test_other_4xx_is_a_permanent_rejection(code: int) -> None:
    """Any other 4xx without Recoverable is PERMANENT with PAS_REJECTED."""
    rule = classify(status(code))
    assert (rule.action, rule.reason) == (PERMANENT, Reason.PAS_REJECTED)


@pytest.mark.parametrize("code", [500, 502, 503, 504, 599])
def test_5xx_marked_recoverable_is_retried(code: int) -> None:
    """A 5xx whose envelope says Recoverable applied nothing: RETRY with PAS_UNAVAILABLE."""
    rule = classify(status(code, recoverable=True))
    assert (rule.action, rule.reason) == (RETRY, Reason.PAS_UNAVAILABLE)


@pytest.mark.parametrize("code", [500, 502, 503, 504, 599])
def test_5xx_without_recoverable_is_an_unknown_outcome(code: int) -> None:
    """A 5xx without Recoverable may have been applied: UNKNOWN with OUTCOME_UNKNOWN."""
    rule = classify(status(code))
    assert (rule.action, rule.reason) == (UNKNOWN, Reason.OUTCOME_UNKNOWN)


@pytest.mark.parametrize("code", [100, 101, 201, 202, 204, 299, 301, 302, 304, 399, 600, 999])
@pytest.mark.parametrize("recoverable", [False, True])
def test_any_other_status_is_an_unknown_outcome(code: int, recoverable: bool) -> None:
    """1xx, 3xx, 2xx other than 200 and out-of-range statuses are UNKNOWN (the last rule)."""
    rule = classify(status(code, recoverable=recoverable))
    assert (rule.action, rule.reason) == (UNKNOWN, Reason.OUTCOME_UNKNOWN)
    assert rule is RULES[-1]


# -- first match wins --------------------------------------------------------------------------


def test_200_marked_recoverable_is_still_applied() -> None:
    """A Recoverable flag on a 200 changes nothing: the APPLIED row comes first."""
    assert classify(status(200, recoverable=True)).action is APPLIED


def test_404_recoverable_matches_the_404_row_before_the_recoverable_4xx_row() -> None:
    """The 404 row precedes 'other 4xx with Recoverable', so 404 recoverable is PERMANENT."""
    rule = classify(status(404, recoverable=True))
    recoverable_4xx = next(
        r for r in RULES if r.recoverable is True and r.statuses == range(400, 500)
    )
    assert recoverable_4xx.matches(status(404, recoverable=True))
    assert RULES.index(rule) < RULES.index(recoverable_4xx)
    assert rule.reason == Reason.ACCOUNT_NOT_FOUND


def test_429_without_envelope_matches_before_the_plain_4xx_row() -> None:
    """A bare 429 also matches 'other 4xx' (PERMANENT) but the earlier 429 row wins: RETRY."""
    bare = status(429)
    plain_4xx = next(r for r in RULES if r.reason == Reason.PAS_REJECTED)
    assert plain_4xx.matches(bare)
    rule = classify(bare)
    assert rule.action is RETRY
    assert RULES.index(rule) < RULES.index(plain_4xx)


def test_a_transport_failure_wins_over_a_status() -> None:
    """An observation with a transport failure is classified by it, whatever its status."""
    assert classify(Observation(status=200, transport=Transport.READ_TIMEOUT)).action is UNKNOWN
    assert classify(Observation(status=500, transport=Transport.CONNECT)).action is RETRY


def test_status_rules_never_match_a_transport_failure() -> None:
    """No status row (including the catch-all) matches an observation with a transport."""
    status_rules = [rule for rule in RULES if rule.transports is None]
    assert status_rules
    for kind in Transport:
        seen = Observation(status=200, transport=kind)
        assert not any(rule.matches(seen) for rule in status_rules), kind


def test_every_transport_failure_has_its_own_row() -> None:
    """Every Transport member is matched by a transport row, never by the fallback."""
    for kind in Transport:
        rule = classify(transport(kind))
        assert rule.transports is not None, kind
        assert kind in rule.transports
    assert NOT_SENT.isdisjoint(ANSWER_LOST)


def oracle(code: int, recoverable: bool) -> Action:
    """The docstring's table for HTTP statuses, written independently of RULES."""
    if code == 200:
        return APPLIED
    if code == 429:
        return RETRY
    if code in (401, 403):
        return DEAD_LETTER
    if code == 404:
        return PERMANENT
    if 400 <= code < 500:
        return RETRY if recoverable else PERMANENT
    if 500 <= code < 600:
        return RETRY if recoverable else UNKNOWN
    return UNKNOWN


def test_every_status_agrees_with_the_documented_table() -> None:
    """Each status from 100 to 599, with and without Recoverable, classifies as documented."""
    for code in range(100, 600):
        for recoverable in (False, True):
            assert classify(status(code, recoverable=recoverable)).action is oracle(
                code, recoverable
            ), (code, recoverable)


# -- the fallback ------------------------------------------------------------------------------


def test_an_empty_observation_falls_back_to_the_last_rule() -> None:
    """An observation with neither status nor transport matches no row and gets the fallback."""
    empty = Observation()
    assert not any(rule.matches(empty) for rule in RULES)
    rule = classify(empty)
    assert rule is RULES[-1]
    assert (rule.action, rule.reason) == (UNKNOWN, Reason.OUTCOME_UNKNOWN)


def test_the_last_rule_is_a_catch_all_for_statuses() -> None:
    """The last rule has no status, transport or Recoverable condition: it matches any status."""
    last = RULES[-1]
    assert (last.statuses, last.transports, last.recoverable) == (None, None, None)
    assert last.matches(status(0))
    assert last.matches(status(1234, recoverable=True))


def test_every_rule_describes_itself_and_only_applied_has_no_reason() -> None:
    """Each row has a description; only APPLIED lacks a failure reason."""
    for rule in RULES:
        assert rule.description.strip()
        assert (rule.reason is None) == (rule.action is APPLIED), rule.description
