"""Run an ASGI app with uvicorn in a background thread: for tests, the search page's browser
test and ``manet bench serve``, which talk to a real server over loopback."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

from manet.config import DEFAULT_SERVE_HOST


class ServerThread:
    """A context manager serving ``app`` on ``host``:``port`` (0: a free port) from a thread.

    >>> with ServerThread(create_app(settings)) as server:
    ...     urllib.request.urlopen(server.url + "/healthz").read()

    Entering returns once the server accepts connections (its lifespan has run); leaving stops
    it and waits for the thread. A failed start raises RuntimeError with the reason.
    """

    def __init__(self, app: Any, host: str = DEFAULT_SERVE_HOST, port: int = 0, *,
                 log_level: str = "warning", start_timeout: float = 60.0) -> None:
        self.app, self.host, self.port = app, host, port
        self.log_level, self.start_timeout = log_level, start_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server (the port it really got)."""
        if self._socket is None:
            raise RuntimeError("the server is not running; use ServerThread as a context manager")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ServerThread:
        """Bind the port, start uvicorn in a thread and wait until it serves."""
        import uvicorn

        # Bound here, not by uvicorn, so that port 0 yields the real port before the thread starts.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP: accepted sockets inherit it, and asyncio turns Nagle off (TCP_NODELAY)
        # only on those that report it; with 0 every keep-alive answer waits ~40 ms on the client's
        # delayed ACK (uvicorn issue 3149).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        # lifespan "on": a startup failure stops the server instead of serving half-ready;
        # a short graceful shutdown, so that an idle keep-alive client cannot hold up the exit.
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="on", timeout_graceful_shutdown=5,
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        self._wait_started()
        return self

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc

    def _wait_started(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._close_socket()
                reason = f": {self._error}" if self._error else " (see the log above)"
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start{reason}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start within "
                                   f"{self.start_timeout:g} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to exit and wait for its thread (up to ``timeout`` seconds)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
