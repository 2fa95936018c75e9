"""A WebSocket echo backend for the end-to-end tests (the ``websockets`` package, asyncio).

Run as ``python ws_echo_server.py``: it listens on a free port of 127.0.0.1 and prints one JSON
line ``{"port": N}`` once ready. Paths:

* ``/echo`` (and any other path): every message comes back as it was sent;
* ``/headers``: the first message answered is the handshake request's header fields (JSON);
* ``/close-after-one``: echoes one message, then closes with code 1000 and reason ``bye``;
* ``/forbidden``: the handshake is answered ``403`` (no upgrade).

No compression and no pings, so the bytes on the wire are exactly the frames of the messages;
messages of any size are accepted.
"""

import asyncio
import json
import sys
from http import HTTPStatus

from websockets.asyncio.server import serve


def refuse(connection, request):
    """``/forbidden`` gets a plain 403 instead of the 101."""
    if request.path == "/forbidden":
        return connection.respond(HTTPStatus.FORBIDDEN, "no websocket here\n")
    return None


async def handler(ws):
    """Echo, or the special paths of the module docstring."""
    path = ws.request.path
    if path == "/headers":
        await ws.recv()
        await ws.send(json.dumps([[k.lower(), v] for k, v in ws.request.headers.raw_items()]))
    elif path == "/close-after-one":
        await ws.send(await ws.recv())
        await ws.close(1000, "bye")
        return
    async for message in ws:
        await ws.send(message)


async def main():
    """Serve until killed."""
    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None,
                     ping_interval=None, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(json.dumps({"port": port}) + "\n")
        sys.stdout.flush()
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
