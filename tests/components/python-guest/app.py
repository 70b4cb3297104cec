"""A wasi-http guest written as a Python user would write one, built by
componentize-py: hello on every path but these three.

- `POST /echo`: the request body back, byte for byte, streamed.
- `/headers`: the request's headers, one `name: value` line each.
- `/error`: raises, as a buggy handler would; the host answers 500.
"""

import asyncio

from componentize_py_types import Ok
from poll_loop import PollLoop, Sink, Stream
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        loop = PollLoop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(respond(request, response_out))


async def respond(request: IncomingRequest, response_out: ResponseOutparam) -> None:
    path = request.path_with_query() or "/"
    if path == "/error":
        raise RuntimeError("the guest failed on purpose")
    if path == "/echo":
        await send(response_out, [("content-type", b"application/octet-stream")], echo(request))
    elif path == "/headers":
        lines = "".join(
            f"{name}: {value.decode()}\n" for name, value in request.headers().entries()
        )
        await send_whole(response_out, lines.encode())
    else:
        await send_whole(response_out, b"Hello World\n")


async def send_whole(response_out: ResponseOutparam, body: bytes) -> None:
    """Sends `body` as text with its length, as the seed does."""

    async def once():
        yield body

    headers = [("content-type", b"text/plain"), ("content-length", str(len(body)).encode())]
    await send(response_out, headers, once())


async def echo(request: IncomingRequest):
    stream = Stream(request.consume())
    while (chunk := await stream.next()) is not None:
        yield chunk


async def send(response_out: ResponseOutparam, headers, chunks) -> None:
    response = OutgoingResponse(Fields.from_list(headers))
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    sink = Sink(body)
    async for chunk in chunks:
        await sink.send(chunk)
    sink.close()
