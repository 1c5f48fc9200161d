"""Holds many idle websockets open and counts the frames they receive: the viewers of
``buzzer bench lb --only websockets``.

    python -m bench.tools.wsholder ws://127.0.0.1:8080/v1/live --count 5000 \\
        --source 127.0.0.2 --source 127.0.0.3

Each socket binds one of ``--source`` in turn, so that the clients' ephemeral ports
(about 28K per source address towards one listener) do not cap the count. The frame
parser and the handshake are :mod:`bench.tools.wsclient`'s. Prints one JSON line when the sockets
are open (``opened``, ``errors``), then one (``received``, ``open``) for every line read
from stdin, until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from collections.abc import Sequence

from bench.tools.wsbroadcast import raise_nofile
from bench.tools.wsclient import WSClient, connect


async def hold(url: str, count: int, sources: Sequence[str], parallel: int) -> None:
    received = 0

    def on_text(_: bytes) -> None:
        nonlocal received
        received += 1

    clients: list[WSClient] = []
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(parallel)
    src = itertools.cycle(sources)

    async def one(source: str) -> None:
        async with gate:
            try:
                clients.append(await connect(url, on_text=on_text, source=source))
            except Exception as exc:  # counted and reported: the bench decides what it means
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    await asyncio.gather(*(one(next(src)) for _ in range(count)))
    print(json.dumps({"opened": len(clients), "errors": errors}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:
        # A line asks for the count now (the bench reads it at the edges of its
        # measurement); end of input ends the run.
        if not sys.stdin.readline():
            stop.set()
            return
        still = sum(1 for c in clients if not c.closed.done())
        print(json.dumps({"received": received, "open": still}), flush=True)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    for c in clients:
        c.abort()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.wsholder")
    parser.add_argument("url")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--source", action="append", default=[], help="repeatable")
    parser.add_argument("--parallel", type=int, default=256, help="handshakes in flight")
    args = parser.parse_args(argv)
    raise_nofile()
    asyncio.run(hold(args.url, args.count, args.source or ["127.0.0.1"], args.parallel))


if __name__ == "__main__":
    main()
