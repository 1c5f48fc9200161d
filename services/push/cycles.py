"""Unlink what aiohttp (3.14) leaves in reference cycles once a websocket is done.

Every closed socket left 29 to 38 objects (closed) or about 56 (lost), 7-10 KB: its
transport, request, headers and so on. Reference counting cannot free a cycle; only a
collection of the generation it has aged into can, and a long-lived socket's objects
are in the oldest, which runner.py's thresholds make rare. So, with viewers coming and
going during a show, that garbage piles up until one full collection frees it all in a
single stall (at exit of a 10,000-viewer bench: 291,265 objects, 0.38 s). Both cycles go
through the WebSocketResponse:

- with a heartbeat, the connection's RequestHandler keeps a bound method of the response
  (``_data_received_cb``: incoming bytes postpone the next ping) and never drops it, not
  even in ``connection_lost``; the response holds the request, its reader and writer,
  which all hold the RequestHandler;
- a socket lost without a close frame, or a close that failed: the response keeps the
  error (``exception()``), whose traceback's frames hold the response.

Once nothing reads the socket or its error any more, both links are of no use, and
without them reference counting frees the rest at once.
"""

from __future__ import annotations

from aiohttp import web


def drop_heartbeat_link(request: web.Request) -> None:
    """Call when the websocket's handler returns: nothing reads the socket after that."""
    protocol = request.protocol
    if getattr(protocol, "_data_received_cb", None) is not None:
        protocol._data_received_cb = None


def drop_tracebacks(ws: web.WebSocketResponse) -> None:
    """Strip the tracebacks of the websocket's error and of the errors it was raised from."""
    todo = [ws.exception()]
    seen: set[int] = set()
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        todo += (exc.__cause__, exc.__context__)
