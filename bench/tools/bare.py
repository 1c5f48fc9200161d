"""The ceiling for benchmarks: an aiohttp+uvloop handler that reads and decodes the
same JSON vote body and answers 202, with no token check, no validation, no Redis."""

from __future__ import annotations

import sys

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler


def accepted(body: dict[str, object]) -> web.Response:
    """The 202 of a vote, from its decoded body."""
    return web.Response(
        status=202,
        body=msgspec.json.encode({"vote_id": body["vote_id"], "accepted": body.get("count", 1)}),
        content_type="application/json",
    )


async def vote(request: web.Request) -> web.Response:
    return accepted(msgspec.json.decode(await request.read()))


async def ready(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def run(app: web.Application, port: int, handler: Handler) -> None:
    """Serve ``handler`` at the vote route of ``app`` on uvloop, as every baseline is."""
    import uvloop

    uvloop.install()
    app.router.add_post("/v1/polls/{poll}/votes", handler)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


def main(port: int) -> None:
    run(web.Application(), port, vote)


if __name__ == "__main__":
    main(int(sys.argv[1]))
