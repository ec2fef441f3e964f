"""``points-adjuster run --workers N``: N consumer processes under one parent.

The parent (``supervisor``) checks what it can once (settings, credentials, the idempotency
store and its continuity, the topics), takes the SQLite owner's lock, then starts N workers
(``child``), each a whole service (``service.app.run_service``) in the same consumer group
with its own client id and, under static membership, its own group instance id
(``identity``). The workers share the idempotency store: the SQLite file under the parent's
lock, or the networked store. The parent serves the one endpoint: /metrics merges the
workers' (``merge``), /livez and /readyz answer for all of them (``endpoints``). It restarts a
worker that dies (``restarts``), forwards SIGTERM, SIGINT and SIGHUP, and waits for every
worker's drain. A worker ends itself when its parent is gone (its lifeline reads EOF).
"""
