"""A small TCP proxy on 127.0.0.1 for fault tests: forwards both ways until told to blackhole.

In blackhole mode it stops reading from every connection (old and new) while keeping them
open, so the client's kernel still gets TCP acknowledgements and only a client-side deadline
can notice that no answer is coming, the way a stuck proxy or load balancer behaves.
``forward()`` resumes; data queued meanwhile is delivered then.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        self._forwarding.clear()

    def forward(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._stop.set()
        self._forwarding.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # A connection that arrives while blackholed waits, accepted but unanswered.
        while not self._forwarding.wait(0.1):
            if self._stop.is_set():
                client.close()
                return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        try:
            while not self._stop.is_set():
                if not self._forwarding.is_set():
                    self._forwarding.wait(0.1)
                    continue
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                while not self._forwarding.is_set() and not self._stop.is_set():  # read just before a blackhole
                    self._forwarding.wait(0.1)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
