"""Request lines and headers too long: a JSON 414 or 431 and one WARNING line, for every
HTTP service (ingest's API, push's pages and websocket upgrades).

aiohttp refuses an over-long line in its HTTP parser, before any middleware, with a
``text/plain`` 400 and an ERROR traceback per request: any client could flood the log
on-call watches. So the parser's own limits are set well above the services' ones, those
are checked by a middleware (JSON, naming the field), and whatever still fails in the
parser is logged as one WARNING line without a traceback.
"""

from __future__ import annotations

import logging
from itertools import chain
from typing import Any, NamedTuple

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_TARGET = 4096
"""Bytes of path and query; the longest real URL of the API is under 100."""
MAX_HEADER = 8190
"""Bytes of one header's name and value (aiohttp's own default line limit)."""
PARSER_LIMIT = 65536
"""Where aiohttp's parser gives up by itself (then a plain 400, see ``_OneLine``)."""


class _OneLine(logging.Filter):
    """Turns aiohttp's traceback for a request its parser refused into one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused", ()
            record.exc_info, record.exc_text = None, None
            record.error = str(exc.message)[:200]
        return True


def handler_args(logger_name: str) -> dict[str, Any]:
    """For ``web.Application(handler_args=...)``: parser limits above ours, and the
    parser's refusals logged on ``logger_name`` as one WARNING line."""
    parser_log = logging.getLogger(logger_name)
    if not any(isinstance(f, _OneLine) for f in parser_log.filters):
        parser_log.addFilter(_OneLine())
    return {
        "max_line_size": PARSER_LIMIT,
        "max_field_size": PARSER_LIMIT,
        "logger": parser_log,
    }


class Oversize(NamedTuple):
    """Why a request is refused: the status and the JSON error body's fields."""

    status: int
    error: str
    message: str
    field: str


def oversize(request: web.Request, log: logging.Logger) -> Oversize | None:
    """The 414 or 431 for a request whose URL or a header is over the limit (logged once
    as a WARNING), or None."""
    if len(request.raw_path) > MAX_TARGET:
        _refused(log, request, "url too long", len(request.raw_path))
        return Oversize(414, "uri_too_long", f"the URL is over {MAX_TARGET} bytes", "path")
    raw_headers = request.raw_headers
    # All of them together under one header's limit, as nearly always: counted in C,
    # not by a Python loop over every header of every request.
    if sum(map(len, chain.from_iterable(raw_headers))) <= MAX_HEADER:
        return None
    for name, value in raw_headers:
        if len(name) + len(value) > MAX_HEADER:
            field = name.decode("latin-1")[:64]
            _refused(log, request, "header too long", len(value), field)
            return Oversize(
                431, "header_too_large", f"header {field} is over {MAX_HEADER} bytes", field
            )
    return None


def _refused(
    log: logging.Logger, request: web.Request, reason: str, size: int, header: str | None = None
) -> None:
    log.warning(
        "request refused: " + reason,
        extra={"size": size, "header": header, "remote": request.remote, "method": request.method},
    )
