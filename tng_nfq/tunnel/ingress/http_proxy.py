"""Ingress `http_proxy`: an HTTP/1.1 forward proxy on `proxy_listen`.

Clients name their destination (CONNECT host:port, or an absolute-URI
request `GET http://host:port/path`). A destination matching a dst_filter is
carried through rats-tls to that same host:port (where an egress - netfilter
capture or another gateway - takes it); any other destination is forwarded
in clear to its real address.

Per client connection, requests are read one by one (tng_nfq/http/parser.py
does the parsing); each absolute-URI request is rewritten to origin-form
and its body streamed by its framing. Responses are not parsed: one thread
per upstream copies whatever the upstream sends back to the client. To move
on to a different destination, the old upstream is half-closed and its
responses are drained to the client first, so responses keep the order of
the requests without parsing them (documented limit: this relies on the
origin answering what it already got after our FIN, which HTTP/1.1 servers
do). When the upstream closes on its own, the client connection is closed
too, as the origin itself would have done.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from tng_nfq.config.model import HttpProxyIngress, Ingress
from tng_nfq.http.filters import should_tunnel
from tng_nfq.http.parser import HeadParser, ParseError, RequestHead, error_response
from tng_nfq.tunnel.channel import TlsChannel, TlsError
from tng_nfq.tunnel.endpoint import HANDSHAKE_TIMEOUT, Endpoint, TcpListener, dial, format_addr
from tng_nfq.tunnel.relay import CHUNK, CIPHERTEXT_CHUNK, PLAINTEXT_CHUNK, ConnectionStats, Relay, set_nodelay
from tng_nfq.tunnel.reuse import BUFFERS, THREADS
from tng_nfq.tunnel.security import NotReady, TunnelSecurity

# How long a client may take to send a complete request head (408 after).
# The environment override exists for tests and unusual deployments.
HEAD_TIMEOUT = float(os.environ.get("TNG_NFQ_HTTP_HEAD_TIMEOUT", "10"))
# After we half-close an upstream to move on, how long its remaining answer
# may take before the upstream is cut (a server that ignores our FIN must not
# hold the client connection forever).
DRAIN_TIMEOUT = 60.0
RECV = 64 * 1024


class _Failed(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _local_addresses() -> set[str]:
    """Addresses of this namespace (for the loop check), read from the kernel."""
    found = {"0.0.0.0", "::", "127.0.0.1", "::1"}
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if "/32 host LOCAL" in line and i > 0:
                found.add(lines[i - 1].split()[-1])
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw)))
    except (OSError, ValueError):
        pass
    return found


class _Upstream:
    """One connection toward a destination: TLS tunnel or clear TCP, plus
    the thread that copies its bytes back to the client."""

    def __init__(self, sock: socket.socket, channel: TlsChannel | None, dest: tuple[str, int],
                 stats: ConnectionStats):
        self.sock = sock
        self.channel = channel
        self.dest = dest
        self.stats = stats
        self.switching = False  # we half-closed it to move on: its EOF must not end the client
        self.half_close_client = False  # raw CONNECT relay: pass the upstream's FIN on as a FIN
        self.ended = threading.Event()
        self.error: str | None = None
        self.clean_tls_close = True

    @property
    def key(self) -> tuple[str, int, bool]:
        return self.dest[0].lower(), self.dest[1], self.channel is not None

    def send(self, data: bytes) -> None:
        if not data:
            return
        self.stats.bytes_up += len(data)
        if self.channel is None:
            self.sock.sendall(data)
            return
        buf = BUFFERS.get(CHUNK)
        out = BUFFERS.get(CIPHERTEXT_CHUNK)
        try:
            view = memoryview(data)
            for start in range(0, len(view), CHUNK):
                piece = view[start:start + CHUNK]
                buf.data[:len(piece)] = piece
                self.channel.send(buf.ptr, len(piece), out.view, out.ptr)
        finally:
            BUFFERS.put(buf)
            BUFFERS.put(out)

    def close_write(self) -> None:
        try:
            if self.channel is not None:
                self.channel.close_write()
            else:
                self.sock.shutdown(socket.SHUT_WR)
        except (OSError, TlsError):
            pass

    def pump(self, client: socket.socket) -> None:
        """Upstream -> client until the upstream's EOF (runs on a pool thread)."""
        try:
            if self.channel is None:
                while True:
                    data = self.sock.recv(RECV)
                    if not data:
                        break
                    client.sendall(data)
                    self.stats.bytes_down += len(data)
            else:
                self._pump_tls(client)
        except EOFError:
            pass
        except (OSError, TlsError) as exc:
            self.error = str(exc) if isinstance(exc, TlsError) else _reason(exc)
        finally:
            if self.half_close_client:
                try:
                    client.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            elif not self.switching:
                # The origin ended the connection (or failed): end the
                # client's too, as a direct connection would have.
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.ended.set()

    def _pump_tls(self, client: socket.socket) -> None:
        raw = BUFFERS.get(CHUNK)
        plain = BUFFERS.get(PLAINTEXT_CHUNK)
        try:
            n = 0
            while True:
                k = self.channel.receive(raw.ptr, n, plain.ptr, PLAINTEXT_CHUNK)
                while k:
                    client.sendall(plain.view[:k])
                    self.stats.bytes_down += k
                    k = self.channel.receive(raw.ptr, 0, plain.ptr, PLAINTEXT_CHUNK)
                n = self.sock.recv_into(raw.data)
                if n == 0:
                    self.clean_tls_close = False
                    return
        finally:
            BUFFERS.put(raw)
            BUFFERS.put(plain)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class HttpProxyIngressEndpoint(Endpoint):
    kind = "ingress"

    def __init__(self, spec: Ingress, security: TunnelSecurity):
        super().__init__(spec.path, "http_proxy")
        assert isinstance(spec.mode, HttpProxyIngress)
        self.spec = spec
        self.mode_spec: HttpProxyIngress = spec.mode
        self.security = security
        # Marker added (as Via) to requests we forward in clear: seeing it
        # come back means the request looped through this proxy.
        self.via = f"tng-nfq-{os.urandom(6).hex()}"
        self._locals: set[str] = set()

    def bind(self) -> None:
        listen = self.mode_spec.proxy_listen
        self.listen(listen.host, listen.port, f"{self.path}.http_proxy.proxy_listen")
        self._locals = _local_addresses()

    # -- decisions ------------------------------------------------------------

    def _is_loop(self, head: RequestHead) -> str | None:
        if any(self.via in v for v in head.values("via")):
            return "the request already went through this proxy (its Via marker came back)"
        port = self.listeners[0].address[1]
        if head.port != port:
            return None
        try:
            infos = socket.getaddrinfo(head.host, head.port, type=socket.SOCK_STREAM)
        except OSError:
            return None
        if any(info[4][0] in self._locals for info in infos):
            return f"destination {head.host}:{head.port} is this proxy itself"
        return None

    def _open(self, head: RequestHead, peer, listener: TcpListener) -> _Upstream:
        dest = (head.host, head.port)
        tunnel = should_tunnel(self.mode_spec.dst_filters, head.host, head.port)
        stats = self.new_stats(peer, listener)
        stats.upstream = format_addr(dest)
        stats.encrypted = tunnel
        try:
            sock = dial(dest)
        except OSError as exc:
            what = "tunnel peer" if tunnel else "destination"
            self.failed(stats, f"cannot reach {what} {stats.upstream}: {_reason(exc)}")
            raise _Failed(502, f"cannot reach {stats.upstream}: {_reason(exc)}") from None
        channel = None
        if tunnel:
            try:
                channel = self.security.new_channel(sock, HANDSHAKE_TIMEOUT)
                channel.handshake(HANDSHAKE_TIMEOUT)
                self.security.check_peer(channel, stats)
            except (NotReady, TlsError, OSError) as exc:
                self.failed(stats, str(exc), sock)
                raise _Failed(502, f"tunnel to {stats.upstream} failed: {exc}") from None
        stats.state = "open"
        with self._lock:
            self.counters.total += 1
            self.counters.active += 1
        return _Upstream(sock, channel, dest, stats)

    def _done(self, up: _Upstream) -> None:
        up.ended.wait()
        up.close()
        up.stats.state = "closed"
        with self._lock:
            self.counters.active -= 1
            self.counters.bytes_up += up.stats.bytes_up
            self.counters.bytes_down += up.stats.bytes_down
            if up.error:
                self.counters.failed += 1
        self.access(up.stats, up.error,
                    clean_tls_close=up.clean_tls_close if up.channel is not None else None)

    # -- one client connection -----------------------------------------------

    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        set_nodelay(sock)
        _Session(self, sock, peer, listener).run()


class _Session:
    def __init__(self, endpoint: HttpProxyIngressEndpoint, sock: socket.socket, peer, listener: TcpListener):
        self.ep = endpoint
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.up: _Upstream | None = None
        self.pending = b""  # bytes read from the client but not consumed yet
        self.requests = 0

    def run(self) -> None:
        try:
            while not self.ep._stopping.is_set():
                head = self._read_head()
                if head is None:
                    return
                self.requests += 1
                if not self._serve(head):
                    return
        except ParseError as exc:
            self._answer(exc.status, exc.message)
        except _Failed as exc:
            self._answer(exc.status, exc.message)
        except (OSError, TlsError):
            pass  # either side went away mid-request: nothing left to tell the client
        finally:
            self._finish_upstream()
            try:
                self.sock.close()
            except OSError:
                pass

    def _answer(self, status: int, message: str) -> None:
        """An error response (only once no upstream is writing to the client)."""
        self._finish_upstream()
        if status in (400, 408, 414, 431, 505, 508):  # the request never left the proxy
            stats = self.ep.new_stats(self.peer, self.listener)
            stats.encrypted = False
            with self.ep._lock:
                self.ep.counters.total += 1
                self.ep.counters.failed += 1
            stats.state = "failed"
            self.ep.access(stats, f"{status}: {message}")
        try:
            self.sock.sendall(error_response(status, message))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _finish_upstream(self) -> None:
        up, self.up = self.up, None
        if up is None:
            return
        up.switching = True
        up.close_write()
        # a stopping daemon does not wait for the origin's last answer
        stopping = self.ep._stopping.is_set()
        if not up.ended.wait(0 if stopping else DRAIN_TIMEOUT):
            up.error = up.error or ("daemon stopping" if stopping
                                    else f"upstream still open {DRAIN_TIMEOUT:g}s after our FIN")
            try:
                up.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ep._done(up)

    def _read_head(self) -> RequestHead | None:
        parser = HeadParser()
        head = parser.feed(self.pending) if self.pending else None
        self.pending = b""
        deadline = time.monotonic() + HEAD_TIMEOUT
        while head is None:
            left = deadline - time.monotonic()
            if left <= 0:
                if not parser.started:
                    if self.up is not None and not self.up.ended.is_set():
                        # A response may still be flowing (we do not parse it), so the
                        # client may rightly be waiting: idle time is bounded by the
                        # origin's own keep-alive timeout instead (README limit).
                        deadline = time.monotonic() + HEAD_TIMEOUT
                        continue
                    if self.requests:
                        return None  # idle keep-alive connection: close quietly
                raise ParseError(408, f"request head not complete within {HEAD_TIMEOUT:g}s")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            data = self.sock.recv(RECV)
            if not data:
                return None  # client closed (possibly mid-head: nobody to answer)
            head = parser.feed(data)
        self.pending = parser.rest
        return head

    def _serve(self, head: RequestHead) -> bool:
        """Forward one request; False when the client connection ends after it."""
        loop = self.ep._is_loop(head)
        if loop is not None:
            raise ParseError(508, f"refused, loop: {loop}")
        body = None if head.is_connect else head.body()  # framing errors are 400s before any byte leaves
        tunnel = should_tunnel(self.ep.mode_spec.dst_filters, head.host, head.port)
        if tunnel and self.ep.http_layer is not None:
            return self._encapsulate(head)
        key = (head.host.lower(), head.port, tunnel)
        if self.up is not None and (head.is_connect or self.up.key != key or self.up.ended.is_set()):
            self._finish_upstream()
        if self.up is None:
            self.up = self.ep._open(head, self.peer, self.listener)
            if not head.is_connect:
                THREADS.submit(self.up.pump, self.sock)
        if head.is_connect:
            return self._connect(head)
        up = self.up
        up.send(head.rewritten(via=None if tunnel else self.ep.via))
        # stream the body: what is already buffered, then straight from the socket
        data = self.pending
        self.pending = b""
        while not body.done:
            if not data:
                data = self.sock.recv(RECV)
                if not data:
                    return False  # client gave up mid-body
            try:
                n = body.feed(data)
            except ParseError as exc:
                # Part of the request already left: an answer from us could
                # interleave with the origin's. Cut both connections instead.
                up.error = f"malformed request body: {exc.message}"
                up.switching = True
                for sk in (up.sock, self.sock):
                    try:
                        sk.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return False
            up.send(data[:n])
            data = data[n:]
        self.pending = data
        if head.wants_close:
            return False
        return True

    def _encapsulate(self, head: RequestHead) -> bool:
        """encap_in_http: the rest of this client connection goes to the HTTP
        encapsulation layer (one destination per client connection)."""
        if head.is_connect:
            raise ParseError(400, "CONNECT cannot be carried by HTTP encapsulation: encap_in_http "
                                  "carries HTTP requests only (send absolute-URI requests)")
        self._finish_upstream()
        from tng_nfq.http.h1 import Request
        from tng_nfq.tunnel.http_stream import HttpStream

        hosts = head.values("host")
        authority = hosts[0].strip() if hosts else f"{head.host}:{head.port}"
        request = Request(head.method, head.target, head.version, head.headers, authority=authority,
                          path=head.path)
        stats = self.ep.new_stats(self.peer, self.listener)
        stats.upstream = format_addr((head.host, head.port))
        stream = HttpStream(self.sock)
        stream.buffered, self.pending = self.pending, b""
        self.ep.serve_http(self.sock, stats, (head.host, head.port), None, first_head=request, stream=stream)
        return False

    def _connect(self, head: RequestHead) -> bool:
        up, self.up = self.up, None
        try:
            self.sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        except OSError:
            up.ended.set()
            self.ep._done(up)
            return False
        early, self.pending = self.pending, b""
        if up.channel is not None:
            with self.ep._lock:  # Endpoint.relay counts it again
                self.ep.counters.total -= 1
                self.ep.counters.active -= 1
            try:
                up.send(early)  # bytes the client sent right behind its CONNECT
            except (OSError, TlsError) as exc:
                self.ep.failed(up.stats, str(exc), up.sock)
                return False
            up.stats.bytes_up = len(early)
            self.ep.relay(Relay(self.sock, up.channel, up.stats, plain_is_downstream=True))
            return False
        # clear CONNECT: the pump covers upstream -> client; this thread the other way
        try:
            up.send(early)
        except OSError:
            pass
        up.half_close_client = True
        THREADS.submit(up.pump, self.sock)
        try:
            while True:
                data = self.sock.recv(RECV)
                if not data:
                    up.close_write()  # the client's FIN: pass it on, keep reading the answer
                    break
                up.sock.sendall(data)
                up.stats.bytes_up += len(data)
        except OSError as exc:
            up.error = up.error or _reason(exc)
            try:
                up.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ep._done(up)
        return False
