"""uvicorn's httptools protocol with a cap on the request head and a deadline for it.

uvicorn's httptools path has neither: httptools keeps a header value it has not seen the end of
by concatenating every piece it reads (as uvicorn does with the URL), so one endless header line
costs quadratic CPU on the event loop and unbounded memory; and a connection that never sends a
byte is never timed out (``timeout_keep_alive`` only starts after a response). h11 takes a size
limit but is several times slower, so the fast path is kept and these two checks are added.

Bytes are counted in ``data_received``, *before* they reach the parser, so a head over the cap
is refused without ever being buffered. The count is exact for a head that starts a read, i.e.
the first request on a connection and any request sent after the previous answer. A pipelined
head that starts in the middle of a read is counted from the next read on, so it may carry at
most one read (transport-sized) more before it is refused: still bounded.

Nothing here touches the body: the clock stops at the end of the head, and the body has its own
deadline in the application (``DFD_BODY_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from src.serve.schemas import error_body

# After a refusal the server half-closes and reads (and drops) what the client is still sending,
# for at most this long and this many bytes. Closing with unread bytes in the socket makes the
# kernel send a reset, and a client still writing its oversized head would then lose the answer.
LINGER_S = 1.0
LINGER_BYTES = 4 * 1024 * 1024


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with ``max_head_bytes`` and ``head_timeout_s`` per request head.

    Build it with ``functools.partial`` for ``uvicorn.Config(http=...)``: a partial of a
    module-level class pickles, so the same value works with ``workers > 1``.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_head_bytes: int,
        head_timeout_s: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = max_head_bytes
        self.head_timeout_s = head_timeout_s
        self._reading_head = True  # the bytes that come next belong to a request head
        self._head_bytes = 0
        # The head's deadline (loop time), or None while no head is due. One timer per connection
        # checks it and re-arms itself when it finds a later one, instead of a timer created and
        # cancelled for every request on a kept-alive connection.
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingered = 0

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A client that connects and sends nothing is closed too, not only a slow one.
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            if self._head_deadline is None and not self._refused:
                # The first byte of a later request on a kept-alive connection: until now
                # uvicorn's keep-alive timer guarded the idle connection (super cancels it).
                self._start_head_clock_if_idle()
            if self._refused or len(data) > self.max_head_bytes - self._head_bytes:
                self._data_past_the_cap(data)
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def _data_past_the_cap(self, data: bytes) -> None:
        """The rare read that would overflow the cap: the parser gets only what fits."""
        if self._refused:  # lingering after a refusal: drop it
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.close()
            return
        while self._reading_head and len(data) > self.max_head_bytes - self._head_bytes:
            room = self.max_head_bytes - self._head_bytes
            fits, data = data[:room], data[room:]
            self._head_bytes += len(fits)
            if fits:
                super().data_received(fits)
            if self._reading_head:  # what fitted did not finish the head
                if not self.transport.is_closing():
                    self._refuse(
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "header_fields_too_large",
                        f"the request line and headers exceed {self.max_head_bytes} bytes",
                    )
                return
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # answered 400, or upgraded: the rest is not ours to parse
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)

    # Parser callbacks

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_deadline = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0
        # Answered before its body had arrived (413, 401): uvicorn's keep-alive timer was armed
        # then and cancelled by the body's bytes, so nothing would time the connection from here.
        # The clock starts only now, so a body is never timed by this class.
        if self.cycle is None or self.cycle.response_complete:
            self._start_head_clock_if_idle()

    # The head clock

    def _start_head_clock_if_idle(self) -> None:
        answered = self.cycle is None or self.cycle.response_complete
        if self._reading_head and answered and not self.transport.is_closing():
            self._start_head_clock()

    def _start_head_clock(self) -> None:
        self._head_deadline = self.loop.time() + self.head_timeout_s
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_deadline, self._check_head_clock)

    def _check_head_clock(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            return  # upgraded to a WebSocket: no longer an HTTP connection
        if self.loop.time() < deadline:  # a later head's deadline
            self._head_timer = self.loop.call_at(deadline, self._check_head_clock)
            return
        self._head_deadline = None
        if self._head_bytes:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                "request_timeout",
                f"the request line and headers did not arrive within {self.head_timeout_s:g} s",
            )
        else:
            # Nothing was asked: no answer. An unsolicited 408 on an idle keep-alive connection
            # could be read by a client as the answer to the request it is sending right now.
            self.transport.close()

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        """Answer with the service's error shape, half-close, drop the rest, then close."""
        self._refused = True
        self._head_deadline = None
        self._unset_keepalive_if_required()
        self.logger.info("%s (%s:%s)", message, *(self.client or ("-", "-")))
        body = json.dumps(error_body(code, message, None), separators=(",", ":")).encode()
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
