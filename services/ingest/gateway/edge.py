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
from services.ingest.gateway.schemas import SECURITY_HEADERS


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    start = time.perf_counter()
    # By the route matched, not by the path: the router matches the decoded path, so a
    # percent-encoded "/v1/%61dmin/..." reaches an admin handler, and must be checked.
    route = route_name(request)
    try:
        check_sizes(request)
        if route.startswith("/v1/admin/"):
            check_admin(request)
        response = await handler(request)
    except BaseException as exc:
        response = as_response(exc, request)
    headers = response.headers
    # JSON answers carry these already (schemas.json_response): one look instead of four.
    if "X-Frame-Options" not in headers:
        for name, value in SECURITY_HEADERS.items():
            headers.setdefault(name, value)
    request.app[OBS].record(route, request.method, response.status, time.perf_counter() - start)
    return response
