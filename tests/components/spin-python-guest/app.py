"""A Spin component written with PyPI's spin-sdk, as its README builds one
(`componentize-py -w spin:up/http-trigger@4.1.0 componentize app`).

- `/`: the hello.
- `/count`: a counter on the default store (`spin:key-value@3.0.0`).
- `/var/NAME`: a variable (`spin:variables@3.0.0`).
"""

from spin_sdk import http, key_value, variables
from spin_sdk.http import Request, Response


class HttpHandler(http.Handler):
    async def handle_request(self, request: Request) -> Response:
        path = request.uri.split("?", 1)[0]
        if path == "/":
            return text(200, "Hello World\n")
        if path == "/count":
            with await key_value.open_default() as store:
                stored = await store.get("count")
                count = int(stored.decode()) + 1 if stored is not None else 1
                await store.set("count", str(count).encode())
            return text(200, f"{count}\n")
        if path.startswith("/var/"):
            try:
                return text(200, await variables.get(path[len("/var/"):]))
            except Exception as err:
                return text(404, f"{err!r}\n")
        return text(404, "not found\n")


def text(status: int, body: str) -> Response:
    return Response(status, {"content-type": "text/plain"}, body.encode())
