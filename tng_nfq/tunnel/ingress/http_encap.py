"""Ingress `encap_in_http`: the application's HTTP requests travel to the
egress as chunked OHTTP inside ordinary HTTP POSTs (TNG 2.x's wire format,
docs/ohttp-wire.md), so that L7 proxies between the two can route them.

Per inner request: the outer request is `POST <path_rewrites(inner path)>`
with the inner request's Host, the `tng` marker header and
`x-tng-ohttp-api: /tng/tunnel`; its body is the metadata and the inner
request in Binary HTTP, sealed to the egress's HPKE key; nothing of the
inner request (method, path, headers, body) is visible outside. The key
configuration comes from `/tng/key-config` and is cached until it expires;
when the ingress verifies, the egress's attestation must bind that key
configuration (client_binding.py) before any request is sealed to it.

Only HTTP can be carried: a client that sends something else gets a 400
and the connection is closed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

import structlog

from tng_nfq.config.model import EncapInHttp
from tng_nfq.http import h1
from tng_nfq.http.h1 import OriginHeadParser, ResponseHeadParser, end_to_end
from tng_nfq.http.ohttp import bhttp
from tng_nfq.http.ohttp.chunked import REQUEST_MEDIA_TYPE, ChunkedRequestEncoder
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyConfig
from tng_nfq.http.ohttp.varint import encode_varint
from tng_nfq.http.ohttp.tng import (
    API_HEADER,
    CHALLENGE_API,
    KEY_CONFIG_API,
    VERIFY_API,
    MAX_JSON_BODY,
    TUNNEL_API,
    KeyConfigResponse,
    key_config_request,
    tunnel_body_prefix,
)
from tng_nfq.http.parser import ParseError
from tng_nfq.http.paths import PathRewriter
from tng_nfq.tunnel.http_stream import HttpStream, PeerClosed
from tng_nfq.tunnel.relay import ConnectionStats

log = structlog.get_logger(component="http_encap")

CLIENT_IDLE_TIMEOUT = 120.0  # between two requests of the application
FIRST_HEAD_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 300.0  # an egress (or its backend) silent this long is given up on
KEY_REFRESH = 300  # seconds, when neither the key config nor a token says otherwise
MARKER_HEADER = ("tng", "1")


class EncapFailed(Exception):
    """The request could not be carried; `status` is what the application gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServerKey:
    configs: list[KeyConfig]
    expires: float
    verdict: object | None = None  # the egress's attestation verdict, when verified
    credential: object | None = None  # our attested HPKE key (ClientCredential), when we attest


class KeyCache:
    """Key configurations per egress address, fetched on first use, shared
    by all connections, refreshed when they expire or the egress says 422."""

    def __init__(self, fetch):
        self._fetch = fetch  # (target, so_mark, path, host) -> ServerKey
        self._lock = threading.Lock()
        self._keys: dict[tuple, ServerKey] = {}
        self._locks: dict[tuple, threading.Lock] = {}

    def get(self, target: tuple[str, int], so_mark: int | None, path: str, host: str) -> ServerKey:
        # Per outer path like upstream: behind an L7 router each path may
        # lead to a different egress, so each gets its own key configuration.
        key = (target, so_mark, path)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one fetch at a time per egress
            current = self._keys.get(key)
            if current is not None and current.expires > time.time():
                return current
            fresh = self._fetch(target, so_mark, path, host)
            self._keys[key] = fresh
            return fresh

    def invalidate(self, target: tuple[str, int], so_mark: int | None, path: str) -> None:
        with self._lock:
            self._keys.pop((target, so_mark, path), None)


class HttpEncap:
    """The HTTP encapsulation of one ingress endpoint."""

    def __init__(self, spec: EncapInHttp, security, path: str, inject: bool = False):
        self.spec = spec
        self.security = security
        self.path = path
        self.rewriter = PathRewriter(spec.path_rewrites)
        self.inject = inject
        self.keys = KeyCache(self._fetch_key)
        self.binding = None
        if security.attester is not None or security.verifier is not None:
            from tng_nfq.tunnel.ohttp_binding import ClientBinding

            self.binding = ClientBinding(security, path)

    # -- key configuration -------------------------------------------------------------

    def _fetch_key(self, target: tuple[str, int], so_mark: int | None, path: str, host: str) -> ServerKey:
        from tng_nfq.attestation.verifier import AttestationFailed

        def api(name: str, obj) -> dict:
            """One call of the egress's background-check API (client attestation)."""
            if name == "challenge":
                return self._call(target, so_mark, path, host, "GET", CHALLENGE_API, None, "challenge")
            return self._call(target, so_mark, path, host, "POST", VERIFY_API, obj, "client verification")

        credential = verdict = None
        model, challenge = (None, None)
        try:
            if self.binding is not None:
                credential = self.binding.credential(api)
                model, challenge = self.binding.key_config_request()
            response = KeyConfigResponse.parse(self._call(
                target, so_mark, path, host, "POST", KEY_CONFIG_API, key_config_request(model, challenge),
                "key configuration", raw=True))
            configs = response.hpke_key_config.configs()
            expires = min(float(response.hpke_key_config.expire_timestamp), time.time() + KEY_REFRESH)
            if self.binding is not None:
                verdict, verdict_expires = self.binding.check_server(response)
                if verdict_expires is not None:
                    expires = min(expires, verdict_expires)
        except OhttpError as exc:
            raise EncapFailed(502, f"bad key configuration from {_fmt(target)}: {exc}") from None
        except AttestationFailed as exc:
            raise EncapFailed(502, f"peer attestation failed: {exc}") from None
        except EncapFailed:
            raise
        except Exception as exc:  # our AA/AS: this request fails, the ingress keeps serving
            raise EncapFailed(502, f"attestation failed: {exc}") from None
        if credential is not None:
            expires = min(expires, credential.expires)
        return ServerKey(configs, expires, verdict, credential)

    def _call(self, target, so_mark, path: str, host: str, method: str, api_name: str, obj, what: str,
              raw: bool = False):
        """One JSON call to the egress's API on `path`; the answer's JSON (or raw bytes)."""
        from tng_nfq.tunnel.endpoint import dial

        body = _json(obj) if obj is not None else b""
        headers = [("Host", host), (API_HEADER, api_name), MARKER_HEADER]
        if obj is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        try:
            sock = dial(target, so_mark)
        except OSError as exc:
            raise EncapFailed(502, f"cannot reach tunnel peer {_fmt(target)}: "
                                   f"{(exc.strerror or str(exc)).lower()}") from None
        stream = HttpStream(sock)
        try:
            stream.send(h1.request_head(method, path, [*headers, ("Connection", "close")]) + body)
            resp = stream.read_head(ResponseHeadParser(), RESPONSE_TIMEOUT)
            payload = stream.read_all(resp.body(method), MAX_JSON_BODY)
        except (OSError, PeerClosed, ParseError) as exc:
            raise EncapFailed(502, f"{what} from {_fmt(target)} failed: {_why(exc)}") from None
        finally:
            stream.close()
        if resp.status != 200:
            raise EncapFailed(502, f"{what} from {_fmt(target)} refused: HTTP {resp.status} "
                                   f"{payload[:300].decode('utf-8', 'replace').strip()}")
        if raw:
            return payload
        try:
            answer = json.loads(payload)
        except ValueError:
            raise EncapFailed(502, f"{what} from {_fmt(target)}: answer is not JSON") from None
        if not isinstance(answer, dict):
            raise EncapFailed(502, f"{what} from {_fmt(target)}: answer is not a JSON object")
        return answer

    # -- one application connection ----------------------------------------------------------

    def serve(self, endpoint, sock: socket.socket, stats: ConnectionStats, target: tuple[str, int],
              so_mark: int | None, first_head: h1.Request | None = None, stream: HttpStream | None = None) -> None:
        from tng_nfq.tunnel.endpoint import dial

        client = stream or HttpStream(sock)
        outer: HttpStream | None = None
        requests = 0
        error: str | None = None
        stats.state = "serving"
        try:
            head = first_head
            while True:
                if head is None:
                    try:
                        head = client.read_head(OriginHeadParser(),
                                                CLIENT_IDLE_TIMEOUT if requests else FIRST_HEAD_TIMEOUT)
                    except (PeerClosed, socket.timeout, TimeoutError):
                        break
                requests += 1
                sent_before = client.bytes_out
                try:
                    if first_head is not None and head.authority.lower() != first_head.authority.lower():
                        raise EncapFailed(502, f"one destination per proxy connection: this connection is "
                                               f"tunneled to {first_head.authority}, not {head.authority}")
                    outer_path = self.rewriter.outer_path(head.path)
                    server_key = self.keys.get(target, so_mark, outer_path, head.authority or _fmt(target))
                    if server_key.verdict is not None:
                        stats.attested = True
                        stats.attestation = server_key.verdict.as_log_fields()
                    elif server_key.credential is not None:
                        stats.attested = True
                    if outer is None:
                        outer = HttpStream(self._dial(dial, target, so_mark))
                    keep = self._one_request(head, client, outer, server_key, stats, target, so_mark, outer_path)
                except EncapFailed as exc:
                    error = exc.message
                    if client.bytes_out == sent_before:
                        _answer(client, exc.status, exc.message)
                    break
                if not keep or head.wants_close:
                    break
                head = None
        except ParseError as exc:
            error = exc.message
            if requests == 0 and exc.status == 400:
                error = f"this ingress carries HTTP only (encap_in_http), the client sent something else: {error}"
            try:
                _answer(client, exc.status, error)
            except OSError:
                pass
        except OSError as exc:
            error = (exc.strerror or str(exc)).lower()
        finally:
            client.close()
            if outer is not None:
                outer.close()
            stats.bytes_up += client.bytes_in
            stats.bytes_down += client.bytes_out
            endpoint.finish_http(stats, error, requests=requests)

    def _dial(self, dial, target, so_mark) -> socket.socket:
        try:
            return dial(target, so_mark)
        except OSError as exc:
            raise EncapFailed(502, f"cannot reach tunnel peer {_fmt(target)}: "
                                   f"{(exc.strerror or str(exc)).lower()}") from None

    def _one_request(self, head: h1.Request, client: HttpStream, outer: HttpStream, server_key: ServerKey,
                     stats: ConnectionStats, target, so_mark, outer_path: str) -> bool:
        from tng_nfq.tunnel.ohttp_binding import metadata_for

        config = server_key.configs[0]
        credential = server_key.credential
        # The key hint names the key we sealed to (upstream egresses require it);
        # an attested client seals in HPKE auth mode with its attested key.
        metadata = metadata_for(credential, config.public_key)
        encoder = ChunkedRequestEncoder(config, sender_private_key=credential.private_key if credential else None)
        headers = end_to_end(head.headers)
        if self.inject:
            from tng_nfq.http.page_inject import restrict_accept_encoding

            headers = _str_headers(restrict_accept_encoding(_byte_headers(headers)))
        authority = head.authority
        # Like upstream's ingress: empty scheme and authority in the control
        # data, the Host field among the headers (an upstream egress turns a
        # non-empty authority into an absolute-form request to the backend).
        inner_headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        try:
            self._send_request(head, client, outer, encoder, metadata, authority, inner_headers,
                               outer_path, target, stats)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the egress answered early (e.g. a refusal) and closed: read why below
        return self._relay_response(head, client, outer, encoder, stats, target, so_mark, outer_path, server_key)

    def _send_request(self, head, client, outer, encoder, metadata, authority, inner_headers,
                      outer_path, target, stats) -> None:
        outer.hold()  # what is ready together leaves in one write
        outer.send(h1.request_head("POST", outer_path, [
            ("Host", authority or _fmt(target)), (API_HEADER, TUNNEL_API), MARKER_HEADER,
            ("Content-Type", REQUEST_MEDIA_TYPE), ("Transfer-Encoding", "chunked")]))
        outer.send_chunk(tunnel_body_prefix(metadata) + encoder.start() + encoder.write(
            bhttp.encode_request_head(head.method.encode(), b"", b"", head.path.encode("latin-1"),
                                      inner_headers)))
        body = head.body()
        if not body.done and not client.buffered:
            outer.flush()  # the body is not here yet: the request head goes now
        for piece in client.body(body):
            # one BHTTP chunk (length, data) per piece, sealed without copying it
            outer.send_sealed_chunk(encoder, encode_varint(len(piece)), piece)
            stats.state = "relaying"
        # the final OHTTP chunk carries no plaintext (upstream's egress refuses one that does)
        outer.send_chunk(encoder.write(bhttp.encode_end()) + encoder.finish())
        outer.end_chunks()
        outer.flush()

    def _relay_response(self, head, client: HttpStream, outer: HttpStream, encoder, stats, target, so_mark,
                        outer_path: str, server_key: ServerKey) -> bool:
        try:
            resp = outer.read_head(ResponseHeadParser(), RESPONSE_TIMEOUT)
        except (PeerClosed, socket.timeout, TimeoutError) as exc:
            raise EncapFailed(502, f"tunnel peer {_fmt(target)} did not answer: {_why(exc)}") from None
        if resp.status != 200:
            text = outer.read_all(resp.body("POST"), 64 * 1024).decode("utf-8", "replace").strip()
            if resp.status == 422:
                self.keys.invalidate(target, so_mark, outer_path)
            raise EncapFailed(502, f"tunnel peer refused the request: HTTP {resp.status} {text[:200]}")
        decoder = encoder.response_decoder()
        inner = bhttp.BhttpDecoder(expect="response")
        writer = _ResponseWriter(client, head, self._banner(server_key) if self.inject else None)
        try:
            for piece in outer.body(resp.body("POST"), views=True):
                # each chunk's plaintext on its own (no join); what they give
                # the application leaves in one write per piece read
                client.hold()
                try:
                    for plain in decoder.feed_parts(piece):
                        if plain:
                            writer.events(inner.feed(plain))
                finally:
                    client.flush()
            plain = decoder.finish()
            if plain:
                writer.events(inner.feed(plain))
            writer.events(inner.finish())
        except OhttpError as exc:
            raise EncapFailed(502, f"bad encapsulated response: {exc}") from None
        if not writer.done:
            raise EncapFailed(502, "encapsulated response ended early")
        return not resp.wants_close and writer.keep_alive

    def _banner(self, server_key: ServerKey):
        """What the top bar says: the verdict on the egress whose key sealed this response."""
        from tng_nfq.http.page_inject import AttestationBanner

        verdict = server_key.verdict
        if verdict is not None:
            return AttestationBanner(attested=True, tee_type=verdict.tee_type, policy_ids=tuple(verdict.policy_ids),
                                     as_address=verdict.as_addr, verified_at=verdict.verified_at,
                                     detail=f"status {verdict.status}, {verdict.model} model")
        return AttestationBanner(attested=False, detail="this ingress does not verify the origin (no verify "
                                                        "configured)")


class _ResponseWriter:
    """Turns the inner response's BHTTP events into HTTP/1.1 for the application."""

    def __init__(self, client: HttpStream, request: h1.Request, banner):
        self.client = client
        self.request = request
        self.done = False
        self.keep_alive = not request.wants_close
        self._framing = None  # "length", "chunked", "close", "none"
        self._injector = None
        if banner is not None:
            from tng_nfq.http.page_inject import ResponseInjector

            self._injector = ResponseInjector(banner, request.method)
        self._inject_active = False

    def events(self, events) -> None:
        held = self.client._held is not None
        self.client.hold()
        try:
            self._events(events)
        finally:
            if not held:
                self.client.flush()

    def _events(self, events) -> None:
        for ev in events:
            if isinstance(ev, bhttp.ResponseHead):
                self._head(ev.status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ev.headers])
            elif isinstance(ev, bhttp.Data):
                self._data(ev.data)
            elif isinstance(ev, bhttp.End):
                self._end()
            # informational responses and trailers are not passed on

    def _head(self, status: int, headers: list[tuple[str, str]]) -> None:
        if self._injector is not None:
            from tng_nfq.http.page_inject import Decision

            decision = self._injector.start(status, _byte_headers(headers))
            if decision == Decision.INJECT:
                self._inject_active = True
                self._status = status
                return
        self._send_head(status, headers)

    def _send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        no_body = self.request.method == "HEAD" or status < 200 or status in (204, 304)
        has_length = any(n.lower() == "content-length" for n, _ in headers)
        headers = [(n, v) for n, v in headers if n.lower() not in ("transfer-encoding", "connection")]
        if no_body or has_length:
            self._framing = "none" if no_body else "length"
        elif self.request.version >= (1, 1):
            self._framing = "chunked"
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            self._framing = "close"
            self.keep_alive = False
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        self.client.send(h1.response_head(status, h1_reason(status), headers))

    def _data(self, data: bytes) -> None:
        if self._inject_active:
            out = self._injector.feed(data)
            self._emit_injected(out)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if not data or self._framing == "none":
            return
        self.client.send(h1.chunk(data) if self._framing == "chunked" else data)

    def _emit_injected(self, out) -> None:
        if out.head is not None:
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in out.head.headers]
            self._send_head(out.head.status, headers)
        self._write(out.body)

    def _end(self) -> None:
        if self._inject_active:
            self._emit_injected(self._injector.finish())
        if self._framing == "chunked":
            self.client.send(h1.LAST_CHUNK)
        self.done = True


def h1_reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _answer(client: HttpStream, status: int, message: str) -> None:
    body = f"tng-nfq: {message}\n".encode()
    client.send(h1.response_head(status, h1_reason(status), [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
        ("Connection", "close")]) + body)


def _byte_headers(headers):
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def _str_headers(headers):
    return [(n.decode("latin-1") if isinstance(n, bytes) else n, v.decode("latin-1") if isinstance(v, bytes) else v)
            for n, v in headers]


def _fmt(target: tuple[str, int]) -> str:
    return f"{target[0]}:{target[1]}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, PeerClosed):
        return "connection closed"
    if isinstance(exc, ParseError):
        return exc.message
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or "timed out").lower()
    return str(exc) or type(exc).__name__


def _json(obj) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()
