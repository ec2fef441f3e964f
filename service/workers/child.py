"""One worker of ``run --workers N``: ``python -m service.workers.child``, started by the
parent (``supervisor``), never by hand.

It runs the whole service with its own identity (``identity.worker_settings``), under the
SQLite owner's lock the parent passed down (``--lock``), and tells the parent, over its
lifeline (a socket whose other end the parent holds), the URL its endpoints listen on. When
the lifeline reads EOF the parent is gone, however it ended: the worker drains and stops as on
SIGTERM, so no worker outlives its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Sequence

import structlog

from service.errors import ConfigError, PointsAdjusterError, StartupError
from service.logs import configure_logging
from service.settings import Settings, load_settings
from service.workers.identity import worker_settings

log = structlog.get_logger("service.workers")

EXIT_FAILED = 1
EXIT_USAGE = 2


def watch_lifeline(lifeline: socket.socket, stop: asyncio.Event) -> None:
    """Set ``stop`` when the parent's end of ``lifeline`` closes."""
    loop = asyncio.get_running_loop()
    lifeline.setblocking(False)

    def readable() -> None:
        try:
            data = lifeline.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:  # the parent sends nothing; ignore it if it ever does
            return
        loop.remove_reader(lifeline.fileno())
        if not stop.is_set():
            log.warning("worker.parent_gone", detail="the parent process ended: draining")
        stop.set()

    loop.add_reader(lifeline.fileno(), readable)


async def run_worker(settings: Settings, lifeline: socket.socket, lock: int | None) -> None:
    from service.app import run_service

    stop = asyncio.Event()
    watch_lifeline(lifeline, stop)

    def listening(url: str) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: the lifeline says so too
            lifeline.send(f"listening {url}\n".encode("ascii"))

    await run_service(settings, stop=stop, inherited_lock=lock, on_listening=listening)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="points-adjuster worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--lifeline", type=int, required=True)
    parser.add_argument("--lock", type=int, default=None)
    args = parser.parse_args(argv)
    structlog.contextvars.bind_contextvars(worker=args.index)
    lifeline = socket.socket(fileno=args.lifeline)
    try:
        settings = worker_settings(load_settings(), args.index)
        configure_logging(settings.log.level, settings.log.format)
        from service.app import run_service  # noqa: F401  (imported before the freeze)
        from service.eventloop import collect_less, run

        collect_less()  # as a single-process run does (service.cli)
        run(run_worker(settings, lifeline, args.lock), settings.event_loop)
    except (ConfigError, StartupError) as exc:
        what = f"invalid setting {exc}" if isinstance(exc, ConfigError) else str(exc)
        print(f"points-adjuster: worker {args.index}: error: {what}", file=sys.stderr)
        return EXIT_USAGE
    except PointsAdjusterError as exc:
        print(f"points-adjuster: worker {args.index}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
