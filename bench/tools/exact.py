"""An HTTP/1.1 client that sends exactly the requests it is given, over a fixed number
of keep-alive connections, one request at a time on each: the same work every run.

wrk runs for a time and sends what fits in it, so two runs do different amounts of work;
a cost per request counted by callgrind (bench.tools.callgrind) needs the count to be
exact. The requests are raw bytes, built beforehand, so the client adds nothing to what
the server parses.
"""

from __future__ import annotations

import asyncio
from collections import Counter


def post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One POST request, as bytes on the wire."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _connection(port: int, requests: list[bytes], statuses: Counter[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while requests:
            writer.write(requests.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head.split(b" ", 2)[1])] += 1
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()


async def _send(port: int, requests: list[bytes], connections: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    todo = list(reversed(requests))  # popped from the end: sent in the order given
    await asyncio.gather(
        *(_connection(port, todo, statuses) for _ in range(min(connections, len(requests))))
    )
    return statuses


def send(port: int, requests: list[bytes], connections: int) -> Counter[int]:
    """Send every request to 127.0.0.1:``port``; the count of each status answered."""
    return asyncio.run(_send(port, requests, connections))
