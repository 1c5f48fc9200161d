"""Request lines and headers too long for the API: a JSON 414 or 431 and one WARNING line.

aiohttp refuses an over-long line in its HTTP parser, before any middleware, with a
``text/plain`` 400 and an ERROR traceback per request: any client could flood the log
on-call watches. So the parser's own limits are set well above the API's, the API's are
checked by the edge middleware (JSON, naming the field), and whatever still fails in the
parser is logged as one WARNING line without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from services.ingest.gateway.errors import ApiError

MAX_TARGET = 4096
"""Bytes of path and query; the longest real URL of the API is under 100."""
MAX_HEADER = 8190
"""Bytes of one header's name and value (aiohttp's own default line limit)."""
PARSER_LIMIT = 65536
"""Where aiohttp's parser gives up by itself (then a plain 400, see ``_OneLine``)."""

log = logging.getLogger("buzzer.gateway")


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


_parser_log = logging.getLogger("buzzer.gateway.http")
_parser_log.addFilter(_OneLine())

HANDLER_ARGS: dict[str, Any] = {
    "max_line_size": PARSER_LIMIT,
    "max_field_size": PARSER_LIMIT,
    "logger": _parser_log,
}
"""For ``web.Application(handler_args=...)``."""


def check_sizes(request: web.Request) -> None:
    """Raise the 414 or 431 for a request whose URL or a header is over the API's limit."""
    if len(request.raw_path) > MAX_TARGET:
        _refused(request, "url too long", len(request.raw_path))
        raise ApiError(414, "uri_too_long", f"the URL is over {MAX_TARGET} bytes", field="path")
    for name, value in request.raw_headers:
        if len(name) + len(value) > MAX_HEADER:
            field = name.decode("latin-1")[:64]
            _refused(request, "header too long", len(value), field)
            raise ApiError(
                431,
                "header_too_large",
                f"header {field} is over {MAX_HEADER} bytes",
                field=field,
            )


def _refused(request: web.Request, reason: str, size: int, header: str | None = None) -> None:
    log.warning(
        "request refused: " + reason,
        extra={"size": size, "header": header, "remote": request.remote, "method": request.method},
    )
