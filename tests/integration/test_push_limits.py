"""Push answers over-long URLs and headers as the vote API does: a JSON 414 or 431 and one
WARNING line, never aiohttp's plain-text 400 with a traceback.

Served by an app with push's own middleware and parser arguments and a stand-in route per
kind of push route; that ``create_app`` wires exactly these is checked apart (a running
push app needs Redis and its stream reader, which adds nothing to what is tested here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from services.common.limits import MAX_HEADER, MAX_TARGET, PARSER_LIMIT, handler_args
from services.push.app import create_app
from services.push.handlers import page_headers
from tests.support.push import push_settings

pytestmark = pytest.mark.integration


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[Records]:
    """What push logs, filters applied (the parser's refusals go to buzzer.push.http)."""
    handler = Records()
    logger = logging.getLogger("buzzer.push")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def warnings_only(logs: Records) -> list[str]:
    assert [r for r in logs.records if r.exc_info or r.levelno >= logging.ERROR] == []
    return [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close()
    return ws


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    app = web.Application(middlewares=[page_headers], handler_args=handler_args("buzzer.push.http"))
    app.router.add_get("/results", _ok)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/v1/polls/{poll}/live", _ws)
    return await aiohttp_client(app)


def test_the_push_app_uses_that_middleware_and_those_parser_limits() -> None:
    app = create_app(push_settings())
    assert app.middlewares[0] is page_headers
    args = app._handler_args or {}
    assert (args.get("max_line_size"), args.get("max_field_size")) == (PARSER_LIMIT, PARSER_LIMIT)


@pytest.mark.parametrize("path", ["/results", "/v1/polls/p1/live", "/healthz"])
async def test_an_over_long_url_is_a_json_414_on_every_route(
    path: str, client: Any, logs: Records
) -> None:
    # A websocket client's upgrade request too: refused before the upgrade.
    headers = {"Upgrade": "websocket", "Connection": "Upgrade"} if "live" in path else {}
    r = await client.get(path + "?x=" + "y" * (MAX_TARGET + 10), headers=headers)
    assert r.status == 414
    assert r.content_type == "application/json"
    body = await r.json()
    assert (body["error"], body["field"]) == ("uri_too_long", "path")
    assert warnings_only(logs) == ["request refused: url too long"]


async def test_an_over_long_header_is_a_json_431_naming_it(client: Any, logs: Records) -> None:
    r = await client.get("/healthz", headers={"X-Junk": "j" * (MAX_HEADER + 10)})
    assert r.status == 431
    body = await r.json()
    assert (body["error"], body["field"]) == ("header_too_large", "X-Junk")
    assert warnings_only(logs) == ["request refused: header too long"]


async def test_what_the_parser_refuses_is_one_warning_line_not_a_traceback(
    client: Any, logs: Records
) -> None:
    r = await client.get("/results?x=" + "y" * 100_000)
    assert r.status == 400
    await r.read()
    assert warnings_only(logs) == ["malformed HTTP request refused"]


async def test_a_long_but_allowed_url_and_header_are_served(client: Any, logs: Records) -> None:
    r = await client.get(
        "/results?x=" + "y" * (MAX_TARGET - 20), headers={"X-Long": "j" * (MAX_HEADER - 20)}
    )
    assert r.status == 200
    assert warnings_only(logs) == []
