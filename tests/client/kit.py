"""What the client tests put between the client and a live `panelsrv serve`: a scripted proxy.

`Proxy` listens on loopback in a thread of its own (so the blocking `Client` can use it from
the test's thread, and the `AsyncClient` from its loop) and plays a script, one step per
request it reads: "pass" forwards it to the server and relays the answer; "429" answers
`429` with `Retry-After: 1` itself, sending nothing on; "drop" forwards it, reads the server's
whole answer, and closes the client's connection without a byte of it (the answer lost on the
way back). Past the script, every request passes. It records each request's headers.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from collections.abc import Iterable

TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
    b'Retry-After: 1\r\nContent-Length: 31\r\n\r\n{"error": "Too many requests"}\n'
)


def _read_message(stream: socket.socket, buffered: bytes) -> tuple[bytes, bytes] | None:
    """One HTTP message with a Content-Length body -> (message, what followed it); None at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = stream.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    size = int(length.group(1)) if length else 0
    while len(rest) < size:
        chunk = stream.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:size], rest[size:]


class Proxy:
    def __init__(self, port: int, script: Iterable[str] = ()) -> None:
        self.upstream = port
        self.script = list(script)
        self.requests: list[dict[str, str]] = []  # each request's headers, lower-case names
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def __enter__(self) -> Proxy:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def _serve(self, client: socket.socket) -> None:
        buffered = b""
        while (got := _read_message(client, buffered)) is not None:
            request, buffered = got
            lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")[1:]
            with self._lock:
                self.requests.append(
                    {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
                )
                step = self.script.pop(0) if self.script else "pass"
            if step == "429":
                client.sendall(TOO_MANY)
                continue
            with socket.create_connection(("127.0.0.1", self.upstream), 5) as server:
                server.sendall(request)
                answer = _read_message(server, b"")
            if step == "drop" or answer is None:
                return  # the connection closes with nothing of the answer sent
            client.sendall(answer[0])
