"""``points-adjuster dlq``: inspect the dead-letter topic and replay what it holds.

- ``list`` reads the topic from its beginning to its current end without a consumer group
  (assign + seek), counts the dead letters by reason and prints one line per record.
- ``show`` prints one dead letter: every header, the key, and the command with its account
  number masked (or the first bytes in hex when the value is not a command); digit runs that
  could be account or card numbers are masked everywhere (``masking``) unless ``--raw``,
  which warns on stderr first.
- ``replay`` re-publishes the original key and value of the selected dead letters to the
  command topic with ``pa.replay.id``/``pa.replay.count`` headers. It reads with its own
  consumer group and commits, after the replayed records are acknowledged, the position up
  to which it has examined records (replayed, refused or skipped), so the next run with the
  same group continues there. A record already replayed ``max_replays`` times is refused.

The selection and planning (``selection``), the formatting (``render``) and the masking
(``masking``) are plain functions over :class:`~service.tools.dlq.selection.DeadLetter` and
bytes, testable without a broker; ``store`` looks into the idempotency store, read only;
``kafka`` does the Kafka reading and writing; ``cli`` is the command line.
"""

from service.tools.dlq.cli import add_dlq_arguments, run_dlq

__all__ = ["add_dlq_arguments", "run_dlq"]
