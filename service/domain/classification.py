"""What to do after one PAS call: the one classification table.

Every call ends in an ``Observation``: an HTTP status (with the error envelope's
``Recoverable`` flag) or a transport failure. ``classify`` looks it up in ``RULES``, first
match wins, and returns what the processor does next:

=============================================  ===========  =====================
observation                                    action       failure reason
=============================================  ===========  =====================
connect refused / connect timeout / pool full  RETRY        PAS_UNAVAILABLE
held back: circuit open, no slot or turn (*)   RETRY        PAS_UNAVAILABLE
read/write timeout, reset, protocol error      UNKNOWN      OUTCOME_UNKNOWN
200 with an unreadable body                    UNKNOWN      OUTCOME_UNKNOWN
200                                            APPLIED      -
429                                            RETRY        PAS_UNAVAILABLE
401, 403 (gateway refused our credentials)     DEAD_LETTER  UNAUTHORIZED
404                                            PERMANENT    ACCOUNT_NOT_FOUND
other 4xx with Recoverable: true               RETRY        PAS_UNAVAILABLE
other 4xx                                      PERMANENT    PAS_REJECTED
5xx with Recoverable: true                     RETRY        PAS_UNAVAILABLE
5xx without Recoverable: true                  UNKNOWN      OUTCOME_UNKNOWN
anything else (1xx, 3xx, other 2xx)            UNKNOWN      OUTCOME_UNKNOWN
=============================================  ===========  =====================

RETRY means nothing was applied and trying again may work (backoff, Retry-After honoured,
then the dead-letter topic when attempts run out). PERMANENT means nothing was applied and
trying again cannot help: a failed outcome. UNKNOWN means PAS may have applied it: never a
blind retry, reconciliation decides. DEAD_LETTER means nothing was applied but an operator
must act (fix the credentials) before a replay.

(*) Held back: the circuit breaker is open, or our own limiter found no slot or, after a
429, no paced turn before the call's deadline. PAS never saw the call, so it is retried
without counting as an attempt (the same for a held-back history lookup).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service.domain.outcome import Reason


class Action(enum.StrEnum):
    APPLIED = "applied"
    RETRY = "retry"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"
    DEAD_LETTER = "dead_letter"


UNHEALTHY = frozenset({Action.RETRY, Action.UNKNOWN})
"""Endings that say PAS is loaded or unwell (unreachable, 429, 5xx, timeouts); a refusal of
one command or an applied call says it keeps up. The circuit breaker and the adaptive limit
both count these."""


class Transport(enum.StrEnum):
    """How a call ended without a readable HTTP answer."""

    CONNECT = "connect"
    CONNECT_TIMEOUT = "connect_timeout"
    POOL_TIMEOUT = "pool_timeout"
    CIRCUIT_OPEN = "circuit_open"
    DEFERRED = "deferred"
    """Our own limiter held the call back (no slot or no paced turn before its deadline)."""
    READ_TIMEOUT = "read_timeout"
    WRITE_TIMEOUT = "write_timeout"
    RESET = "reset"
    PROTOCOL = "protocol"
    UNREADABLE_ANSWER = "unreadable_answer"


@dataclass(frozen=True)
class Observation:
    """One call's ending: an HTTP status (and Recoverable), or a transport failure."""

    status: int | None = None
    recoverable: bool = False
    transport: Transport | None = None


@dataclass(frozen=True)
class Rule:
    """Matches an observation; ``None`` fields match anything."""

    description: str
    action: Action
    reason: str | None
    transports: frozenset[Transport] | None = None
    statuses: range | frozenset[int] | None = None
    recoverable: bool | None = None

    def matches(self, seen: Observation) -> bool:
        if self.transports is not None:
            return seen.transport in self.transports
        if seen.transport is not None or seen.status is None:
            return False
        if self.statuses is not None and seen.status not in self.statuses:
            return False
        return self.recoverable is None or self.recoverable == seen.recoverable


NOT_SENT = frozenset({Transport.CONNECT, Transport.CONNECT_TIMEOUT, Transport.POOL_TIMEOUT})
HELD_BACK = frozenset({Transport.CIRCUIT_OPEN, Transport.DEFERRED})
"""Calls we did not send on our own account (the circuit breaker, the limiter): retried
without counting as an attempt, since PAS never saw them."""
ANSWER_LOST = frozenset(
    {Transport.READ_TIMEOUT, Transport.WRITE_TIMEOUT, Transport.RESET, Transport.PROTOCOL}
)

RULES: tuple[Rule, ...] = (
    Rule("the connection was never made", Action.RETRY, Reason.PAS_UNAVAILABLE, NOT_SENT),
    Rule(
        "held back by the circuit breaker or the limiter: nothing was sent",
        Action.RETRY,
        Reason.PAS_UNAVAILABLE,
        HELD_BACK,
    ),
    Rule(
        "the request left, the answer was lost", Action.UNKNOWN, Reason.OUTCOME_UNKNOWN, ANSWER_LOST
    ),
    Rule(
        "an answer that cannot be read",
        Action.UNKNOWN,
        Reason.OUTCOME_UNKNOWN,
        frozenset({Transport.UNREADABLE_ANSWER}),
    ),
    Rule("applied", Action.APPLIED, None, statuses=frozenset({200})),
    Rule("rate limited", Action.RETRY, Reason.PAS_UNAVAILABLE, statuses=frozenset({429})),
    Rule(
        "the gateway refused our credentials",
        Action.DEAD_LETTER,
        Reason.UNAUTHORIZED,
        statuses=frozenset({401, 403}),
    ),
    Rule("unknown account", Action.PERMANENT, Reason.ACCOUNT_NOT_FOUND, statuses=frozenset({404})),
    Rule(
        "a client error marked Recoverable",
        Action.RETRY,
        Reason.PAS_UNAVAILABLE,
        statuses=range(400, 500),
        recoverable=True,
    ),
    Rule("a client error", Action.PERMANENT, Reason.PAS_REJECTED, statuses=range(400, 500)),
    Rule(
        "a server error marked Recoverable: not applied",
        Action.RETRY,
        Reason.PAS_UNAVAILABLE,
        statuses=range(500, 600),
        recoverable=True,
    ),
    Rule(
        "a server error without Recoverable: may be applied",
        Action.UNKNOWN,
        Reason.OUTCOME_UNKNOWN,
        statuses=range(500, 600),
    ),
    Rule("any other answer", Action.UNKNOWN, Reason.OUTCOME_UNKNOWN),
)


def classify(seen: Observation) -> Rule:
    """The first rule matching ``seen`` (the last rule matches every HTTP status)."""
    for rule in RULES:
        if rule.matches(seen):
            return rule
    return RULES[-1]
