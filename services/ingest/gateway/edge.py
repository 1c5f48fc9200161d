"""The gateway's one middleware: size limits, admin auth, JSON errors, security headers,
metrics.

One layer instead of four: on the vote path every middleware layer is a coroutine
frame per request, and this is the hottest path of the system.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.common.observability import OBS, route_name
from services.ingest.gateway.auth import check_admin
from services.ingest.gateway.errors import as_response
from services.ingest.gateway.limits import check_sizes

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    start = time.perf_counter()
    try:
        check_sizes(request)
        if request.path.startswith("/v1/admin/"):
            check_admin(request)
        response = await handler(request)
    except BaseException as exc:
        response = as_response(exc, request)
    headers = response.headers
    for name, value in _SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    request.app[OBS].record(
        route_name(request), request.method, response.status, time.perf_counter() - start
    )
    return response
