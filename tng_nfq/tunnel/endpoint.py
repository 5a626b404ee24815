"""What every running ingress/egress shares: listeners, live connections,
counters, the access log and an orderly stop.

A mode (ingress/mapping, egress/mapping, ...) subclasses `Endpoint` and
implements `handle(sock, peer, listener)`, which runs in its own thread per
accepted connection.
"""

from __future__ import annotations

import abc
import socket
import threading
import time
from dataclasses import dataclass

import structlog

from tng_nfq.tunnel.channel import TlsError
from tng_nfq.tunnel.relay import ConnectionStats, Relay, set_nodelay
from tng_nfq.tunnel.reuse import THREADS
from tng_nfq.tunnel.security import NotReady

access_log = structlog.get_logger(component="access")
log = structlog.get_logger(component="endpoint")

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 15.0
# Connection threads spend their life blocked in socket calls; a small
# stack keeps thousands of them cheap.
threading.stack_size(512 * 1024)


def dial(address: tuple[str, int], so_mark: int | None = None) -> socket.socket:
    """A connected, blocking TCP socket; with `so_mark`, every packet from the
    SYN on carries it (so our own connections are not captured again)."""
    if so_mark is None:
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, so_mark)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)
    set_nodelay(sock)
    return sock


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


class StartError(Exception):
    """An endpoint could not start (e.g. its port is taken). One line, with the config path."""


@dataclass
class Counters:
    total: int = 0
    active: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def format_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpListener:
    """A listening socket with its own accept thread."""

    def __init__(self, host: str, port: int, path: str, backlog: int = 1024):
        self.path = path
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(backlog)
        except OSError as exc:
            self.sock.close()
            reason = (exc.strerror or str(exc)).lower()
            raise StartError(f"{path}: cannot listen on {format_addr((host, port))}: {reason}") from None
        self.address = self.sock.getsockname()
        self.thread: threading.Thread | None = None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()


class _HttpConnection:
    """A connection served by an HTTP encapsulation layer, as the admin API
    and `stop` see it (they know relays by `.stats` and `.abort`)."""

    def __init__(self, sock: socket.socket, stats: ConnectionStats):
        self.plain = sock
        self.stats = stats
        self.error: str | None = None

    def abort(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        try:
            self.plain.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Endpoint(abc.ABC):
    kind = "endpoint"  # "ingress" / "egress"
    # HttpEncap (ingress) / HttpDecap (egress) when the tunnel is carried in
    # HTTP (encap_in_http / decap_from_http) instead of rats-tls.
    http_layer = None

    def __init__(self, path: str, mode: str):
        self.path = path
        self.mode = mode
        self.counters = Counters()
        self.listeners: list[TcpListener] = []
        self.relays: set[Relay] = set()
        self._pending: set[socket.socket] = set()  # accepted, not yet relaying
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._in_flight = 0  # accepted connections whose handler has not returned
        self._idle = threading.Condition(self._lock)
        self.log = log.bind(endpoint=path, mode=mode)

    # -- lifecycle ------------------------------------------------------------

    def listen(self, host: str, port: int, path: str) -> TcpListener:
        listener = TcpListener(host, port, path)
        self.listeners.append(listener)
        return listener

    def bind(self) -> None:
        """Create the listening sockets (may raise StartError). Subclasses override."""

    def start(self) -> None:
        for listener in self.listeners:
            listener.thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                               name=f"{self.path}-accept", daemon=True)
            listener.thread.start()
            self.log.info("listening", address=format_addr(listener.address))

    def drain(self) -> None:
        """Stop accepting; let the open connections run to their end."""
        self._stopping.set()
        for listener in self.listeners:
            listener.close()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close every connection, wait for the handlers."""
        self._stopping.set()
        for listener in self.listeners:
            listener.close()
        with self._lock:
            relays = list(self.relays)
            pending = list(self._pending)
        for relay in relays:
            relay.abort("daemon stopping")
        for sock in pending:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, grace)

    # -- per connection -------------------------------------------------------

    def _accept_loop(self, listener: TcpListener) -> None:
        while not self._stopping.is_set():
            try:
                sock, peer = listener.sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # e.g. EMFILE: back off instead of spinning
                continue
            with self._lock:
                self._pending.add(sock)
                self._in_flight += 1
            THREADS.submit(self._run_handler, sock, peer, listener)

    def _run_handler(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        try:
            self.handle(sock, peer, listener)
        except Exception:  # a bug in one connection must not take the daemon down
            self.log.exception("connection handler failed", downstream=format_addr(peer))
            try:
                sock.close()
            except OSError:
                pass
        finally:
            with self._lock:
                self._pending.discard(sock)
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    @abc.abstractmethod
    def handle(self, sock: socket.socket, peer, listener: TcpListener) -> None:
        """Serve one accepted connection (runs in its own thread)."""

    # -- the two halves every mode shares ------------------------------------------

    def tunnel_out(self, sock: socket.socket, stats: ConnectionStats, target: tuple[str, int],
                   so_mark: int | None = None) -> None:
        """Ingress side: open the rats-tls tunnel to `target`, check the peer,
        relay the app's `sock` through it. Always consumes `sock`."""
        set_nodelay(sock)
        if self.http_layer is not None:
            return self.serve_http(sock, stats, target, so_mark)
        try:
            up = dial(target, so_mark)
        except OSError as exc:
            return self.failed(stats, f"cannot reach tunnel peer {stats.upstream}: {_reason(exc)}", sock)
        try:
            channel = self.security.new_channel(up, HANDSHAKE_TIMEOUT)
            channel.handshake(HANDSHAKE_TIMEOUT)
            self.security.check_peer(channel, stats)
        except (NotReady, TlsError, OSError) as exc:
            return self.failed(stats, str(exc), sock, up)
        self.relay(Relay(sock, channel, stats, plain_is_downstream=True))

    def tunnel_in(self, sock: socket.socket, stats: ConnectionStats, backend: tuple[str, int],
                  so_mark: int | None = None) -> None:
        """Egress side: accept the tunnel on `sock`, check the peer, and only
        then dial `backend` and relay. Always consumes `sock`."""
        set_nodelay(sock)
        if self.http_layer is not None:
            return self.serve_http(sock, stats, backend, so_mark)
        try:
            channel = self.security.new_channel(sock, HANDSHAKE_TIMEOUT)
            channel.handshake(HANDSHAKE_TIMEOUT)
            self.security.check_peer(channel, stats)
        except (NotReady, TlsError, OSError) as exc:
            return self.failed(stats, str(exc), sock)
        try:
            up = dial(backend, so_mark)
        except OSError as exc:
            try:
                channel.close_write()
            except OSError:
                pass
            return self.failed(stats, f"cannot reach backend {stats.upstream}: {_reason(exc)}", sock)
        self.relay(Relay(up, channel, stats, plain_is_downstream=False))

    def serve_http(self, sock: socket.socket, stats: ConnectionStats, address: tuple[str, int],
                   so_mark: int | None, **kw) -> None:
        """Run the HTTP encapsulation layer on `sock`, tracked like a relay."""
        conn = _HttpConnection(sock, stats)
        with self._lock:
            self.relays.add(conn)
            self.counters.active += 1
            self._pending.discard(sock)
        try:
            self.http_layer.serve(self, sock, stats, address, so_mark, **kw)
        finally:
            with self._lock:
                self.relays.discard(conn)
                self.counters.active -= 1

    def finish_http(self, stats: ConnectionStats, error: str | None, **extra) -> None:
        """Count and log one connection served by the HTTP layer."""
        with self._lock:
            self.counters.total += 1
            self.counters.bytes_up += stats.bytes_up
            self.counters.bytes_down += stats.bytes_down
            if error:
                self.counters.failed += 1
        stats.state = "closed"
        self.access(stats, error, **extra)

    def new_stats(self, peer, listener: TcpListener) -> ConnectionStats:
        return ConnectionStats(endpoint=self.path, mode=self.mode, downstream=format_addr(peer),
                               listener=format_addr(listener.address))

    def relay(self, relay: Relay) -> None:
        """Run a relay to the end, counted and logged."""
        with self._lock:
            self.relays.add(relay)
            self.counters.total += 1
            self.counters.active += 1
            self._pending.discard(relay.plain)
            self._pending.discard(relay.channel.sock)
        try:
            relay.run()
        finally:
            with self._lock:
                self.relays.discard(relay)
                self.counters.active -= 1
                self.counters.bytes_up += relay.stats.bytes_up
                self.counters.bytes_down += relay.stats.bytes_down
                if relay.error:
                    self.counters.failed += 1
            self.access(relay.stats, relay.error, clean_tls_close=relay.clean_tls_close)

    def failed(self, stats: ConnectionStats, error: str, *socks: socket.socket | None) -> None:
        """A connection that never got to relaying: close it, count it, log it."""
        for sock in socks:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        with self._lock:
            self.counters.total += 1
            self.counters.failed += 1
        stats.state = "failed"
        self.access(stats, error)

    def access(self, stats: ConnectionStats, error: str | None, **extra) -> None:
        fields = dict(
            endpoint=stats.endpoint, mode=stats.mode, downstream=stats.downstream,
            listener=stats.listener, upstream=stats.upstream or None,
            bytes_up=stats.bytes_up, bytes_down=stats.bytes_down,
            duration_s=round(time.time() - stats.started, 3),
            encrypted=stats.encrypted, attested=stats.attested,
            outcome="error" if error else "ok",
        )
        if stats.attestation:
            fields["peer_attestation"] = stats.attestation
        if error:
            fields["error"] = error
        if extra.get("clean_tls_close") is False and not error:
            fields["note"] = "peer closed without close_notify"
        for key in ("requests", "tunneled"):
            if key in extra:
                fields[key] = extra[key]
        (access_log.warning if error else access_log.info)("connection", **fields)
