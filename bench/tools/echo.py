"""A stand-in web node for HAProxy tests: answers ``/readyz``, echoes which node served a
request, and echoes websocket messages.

    python -m bench.tools.echo --port 8081 --name ingest-a
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from aiohttp import WSMsgType, web


def create_app(name: str) -> web.Application:
    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def any_path(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(json.dumps({"backend": name, "path": request.path}))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.path,
                "bytes": len(body),
                "proto": request.headers.get("X-Forwarded-Proto", ""),
            }
        )

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.name),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
