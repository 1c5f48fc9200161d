"""The ceiling for benchmarks: an aiohttp+uvloop handler that reads and decodes the
same JSON vote body and answers 202, with no token check, no validation, no Redis."""

from __future__ import annotations

import sys

import msgspec
from aiohttp import web


async def vote(request: web.Request) -> web.Response:
    body = msgspec.json.decode(await request.read())
    return web.Response(
        status=202,
        body=msgspec.json.encode({"vote_id": body["vote_id"], "accepted": body.get("count", 1)}),
        content_type="application/json",
    )


async def ready(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main(port: int) -> None:
    import uvloop

    uvloop.install()
    app = web.Application()
    app.router.add_post("/v1/polls/{poll}/votes", vote)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main(int(sys.argv[1]))
