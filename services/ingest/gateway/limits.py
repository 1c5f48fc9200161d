"""Request lines and headers too long for the API: a JSON 414 or 431 and one WARNING line.

The limits and the parser's one-line logging are shared with push
(``services.common.limits``); here they become the API's ``ApiError``.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from services.common.limits import MAX_HEADER, MAX_TARGET, PARSER_LIMIT, handler_args, oversize
from services.ingest.gateway.errors import ApiError

__all__ = ["HANDLER_ARGS", "MAX_HEADER", "MAX_TARGET", "PARSER_LIMIT", "check_sizes"]

log = logging.getLogger("buzzer.gateway")

HANDLER_ARGS: dict[str, Any] = handler_args("buzzer.gateway.http")
"""For ``web.Application(handler_args=...)``."""


def check_sizes(request: web.Request) -> None:
    """Raise the 414 or 431 for a request whose URL or a header is over the API's limit."""
    refused = oversize(request, log)
    if refused is not None:
        raise ApiError(refused.status, refused.error, refused.message, field=refused.field)
