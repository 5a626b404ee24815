"""Egress `decap_from_http`: the tunnel arrives as HTTP (chunked OHTTP, TNG
2.x's wire format, docs/ohttp-wire.md) so that L7 proxies and load balancers
can sit between ingress and egress.

One accepted connection carries a sequence of outer HTTP/1.1 requests:
- `x-tng-ohttp-api: /tng/key-config`: publish our HPKE key configuration,
  bound to attestation evidence when this egress attests;
- `x-tng-ohttp-api: /tng/tunnel`: open the chunked OHTTP request, check the
  client's attested key when this egress verifies, forward the inner
  request to the backend and seal its response as it streams;
- no such header: plain HTTP. Passed to the backend in clear only when its
  path fully matches `allow_non_tng_traffic_regexes`, else refused (403).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import structlog

from tng_nfq.config.model import DecapFromHttp
from tng_nfq.http import h1
from tng_nfq.http.h1 import OriginHeadParser, ResponseHeadParser, end_to_end, header_values
from tng_nfq.http.ohttp import bhttp
from tng_nfq.http.ohttp.chunked import REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE
from tng_nfq.http.ohttp.errors import OhttpError
from tng_nfq.http.ohttp.keyconfig import KeyPair
from tng_nfq.http.ohttp.varint import encode_varint
from tng_nfq.http.ohttp.tng import (
    API_HEADER,
    CHALLENGE_API,
    KEY_CONFIG_API,
    VERIFY_API,
    MAX_JSON_BODY,
    TUNNEL_API,
    HpkeKeyConfig,
    KeyConfigRequest,
    KeyConfigResponse,
    TunnelBodyDecoder,
)
from tng_nfq.http.parser import ParseError
from tng_nfq.http.paths import DirectForwardRules
from tng_nfq.tunnel.http_stream import HttpStream, PeerClosed
from tng_nfq.tunnel.relay import ConnectionStats

log = structlog.get_logger(component="http_decap")

IDLE_TIMEOUT = 60.0  # between two outer requests on one connection
KEY_LIFETIME = 3600.0  # a fresh HPKE key pair at most this often
REFUSED_PLAIN = 403
_CODES = {403: "RejectNonTngRequest", 422: "ShouldRequestNewKeyConfigFromServer", 502: "BackendUnreachable"}

REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Content Too Large",
           422: "Unprocessable Content", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServerKeys:
    """The egress's HPKE key pairs: the current one plus the previous one, so
    that a client holding a configuration fetched just before a rotation
    still gets through."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current = KeyPair.generate(key_id=0)
        self._previous: KeyPair | None = None
        self._born = time.time()

    def current(self) -> KeyPair:
        with self._lock:
            if time.time() - self._born > KEY_LIFETIME:
                next_id = (self._current.key_id + 1) % 256
                self._previous, self._current = self._current, KeyPair.generate(key_id=next_id)
                self._born = time.time()
            return self._current

    def all(self) -> list[KeyPair]:
        with self._lock:
            return [k for k in (self._current, self._previous) if k is not None]

    def for_hint(self, public_key: bytes | None) -> list[KeyPair]:
        keys = self.all()
        if public_key:
            hinted = [k for k in keys if k.config.public_key == public_key]
            if hinted:
                return hinted
        return keys


class _BackendLink:
    """The backend connection of one outer connection, kept alive across its
    tunnel requests (like a proxy's upstream pool of one): a request pays for
    a TCP connect only when the backend closed the previous one."""

    def __init__(self, connect):
        self._connect = connect
        self.stream: HttpStream | None = None
        self.reused = False

    def get(self) -> HttpStream:
        if self.stream is not None and not _idle_and_open(self.stream.sock):
            self.close()
        if self.stream is None:
            return self.fresh()
        self.reused = True
        return self.stream

    def fresh(self) -> HttpStream:
        self.close()
        self.stream = HttpStream(self._connect())
        self.reused = False
        return self.stream

    def release(self, reusable: bool) -> None:
        if not reusable:
            self.close()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def _idle_and_open(sock: socket.socket) -> bool:
    """An idle keep-alive connection has nothing to read; readable means the
    backend closed it (EOF) or sent something unasked: not reusable."""
    import select

    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class HttpDecap:
    """The HTTP decapsulation of one egress endpoint."""

    def __init__(self, spec: DecapFromHttp, security, path: str):
        self.spec = spec
        self.security = security
        self.path = path
        self.direct = DirectForwardRules(spec.allow_non_tng_traffic_regexes)
        self.keys = ServerKeys()
        self.binding = None
        if security.attester is not None or security.verifier is not None:
            from tng_nfq.tunnel.ohttp_binding import ServerBinding

            self.binding = ServerBinding(security, path)

    # -- one accepted connection ---------------------------------------------------

    def serve(self, endpoint, sock: socket.socket, stats: ConnectionStats, backend: tuple[str, int],
              so_mark: int | None) -> None:
        from tng_nfq.tunnel.endpoint import dial

        stream = HttpStream(sock)
        link = _BackendLink(lambda: self._connect(backend, so_mark, dial, stats))
        requests = tunneled = 0
        error: str | None = None
        stats.state = "serving"
        stats.encrypted = False
        stats.attested = self.security.attester is not None
        try:
            while True:
                try:
                    head = stream.read_head(OriginHeadParser(), IDLE_TIMEOUT if requests else 30.0)
                except PeerClosed:
                    break
                except (socket.timeout, TimeoutError):
                    break
                requests += 1
                sent_before = stream.bytes_out
                api = (header_values(head.headers, API_HEADER) or [None])[0]
                try:
                    if api == TUNNEL_API:
                        tunneled += 1
                        stats.encrypted = True
                        keep = self._tunnel(head, stream, stats, backend, link)
                    elif api == KEY_CONFIG_API:
                        keep = self._key_config(head, stream)
                    elif api in (CHALLENGE_API, VERIFY_API):
                        keep = self._client_attestation(api, head, stream)
                    elif api is not None:
                        raise Refused(404, f"unknown {API_HEADER} {api!r}")
                    elif self.direct.allows(head.path):
                        keep = self._forward_plain(head, stream, stats, backend, so_mark, dial)
                    else:
                        raise Refused(REFUSED_PLAIN, f"plain HTTP request for {head.path.split('?')[0]!r} refused: "
                                                     "this endpoint accepts TNG-encapsulated traffic only "
                                                     "(see allow_non_tng_traffic_regexes)")
                except Refused as exc:
                    error = exc.message
                    if stream.bytes_out == sent_before:  # else the answer is already under way: just close
                        self._answer(stream, exc.status, exc.message, close=True)
                    break
                if not keep or head.wants_close:
                    break
        except ParseError as exc:
            error = exc.message
            try:
                self._answer(stream, exc.status, exc.message, close=True)
            except OSError:
                pass
        except OhttpError as exc:
            error = f"bad encapsulated request: {exc}"
        except OSError as exc:
            error = (exc.strerror or str(exc)).lower()
        finally:
            link.close()
            stream.close()
            stats.bytes_up += stream.bytes_in
            stats.bytes_down += stream.bytes_out
            endpoint.finish_http(stats, error, requests=requests, tunneled=tunneled)

    # -- the APIs ----------------------------------------------------------------------

    def _key_config(self, head: h1.Request, stream: HttpStream) -> bool:
        body = stream.read_all(head.body(), MAX_JSON_BODY)
        try:
            request = KeyConfigRequest.parse(body)
        except OhttpError as exc:
            raise Refused(400, str(exc)) from None
        config = HpkeKeyConfig.for_keys([self.keys.current()])
        response = self._attested_key_config(request, config)
        payload = _json(response.as_json())
        stream.send(h1.response_head(200, "OK", [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(payload)))]) + payload)
        return True

    def _attested_key_config(self, request: KeyConfigRequest, config: HpkeKeyConfig) -> KeyConfigResponse:
        if self.binding is None:
            return KeyConfigResponse(config)
        from tng_nfq.tunnel.ohttp_binding import BindingRefused

        try:
            return self.binding.key_config_response(request, config)
        except BindingRefused as exc:
            raise Refused(exc.status, exc.message) from None

    def _client_attestation(self, api: str, head: h1.Request, stream: HttpStream) -> bool:
        """Background-check client attestation: hand out a challenge from our
        AS, or have our AS appraise the client's evidence."""
        from tng_nfq.tunnel.ohttp_binding import BindingRefused

        body = stream.read_all(head.body(), MAX_JSON_BODY)
        if self.binding is None:
            raise Refused(500, "client attestation is not required by this egress")
        try:
            if api == CHALLENGE_API:
                answer = self.binding.challenge()
            else:
                try:
                    request = json.loads(body)
                except ValueError:
                    raise Refused(400, "verify request is not JSON") from None
                if not isinstance(request, dict):
                    raise Refused(400, "verify request is not a JSON object")
                answer = self.binding.verify_evidence(request)
        except BindingRefused as exc:
            raise Refused(exc.status, exc.message) from None
        payload = _json(answer)
        stream.send(h1.response_head(200, "OK", [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(payload)))]) + payload)
        return True

    def _keys_for(self, metadata):
        """Which keys may open this request, and with which client key (auth mode)."""
        from tng_nfq.tunnel.ohttp_binding import sender_key

        return self.keys.for_hint(metadata.key_hint), sender_key(metadata)

    def _tunnel(self, head: h1.Request, stream: HttpStream, stats: ConnectionStats,
                backend: tuple[str, int], link: "_BackendLink") -> bool:
        if head.method != "POST":
            raise Refused(400, "tunnel requests must be POST")
        ctype = (header_values(head.headers, "content-type") or [""])[0].split(";")[0].strip().lower()
        if ctype != REQUEST_MEDIA_TYPE:
            raise Refused(400, f"tunnel requests must be {REQUEST_MEDIA_TYPE}, not {ctype or 'untyped'}")
        body = TunnelBodyDecoder(self._keys_for)
        inner = bhttp.BhttpDecoder(expect="request")
        events: list = []
        pieces = stream.body(head.body(), views=True)

        def pull() -> bool:
            """Read the outer body until more inner events exist; False at its end."""
            for piece in pieces:
                plain = body.feed(piece)
                if plain:
                    events.extend(inner.feed(plain))
                if events:
                    return True
            plain = body.finish()
            if plain:
                events.extend(inner.feed(plain))
            events.extend(inner.finish())
            return False

        try:
            more = pull()
            while not events or not isinstance(events[0], bhttp.RequestHead):
                if not more:
                    raise Refused(400, "encapsulated request has no request head")
                more = pull()
        except OhttpError as exc:
            # A key we no longer hold (rotation, restart): 422 makes upstream
            # clients fetch a new key configuration and try again.
            if body.metadata is not None and body.decoder is not None and not body.decoder.ready:
                raise Refused(422, f"cannot open the encapsulated request: {exc}") from None
            raise Refused(422 if "key" in str(exc) else 400, f"cannot open the encapsulated request: {exc}") from None
        self._check_client(body.metadata, stats)
        req: bhttp.RequestHead = events.pop(0)
        log.debug("inner request", endpoint=self.path, method=req.method, scheme=req.scheme,
                  authority=req.authority, path=req.path, header_names=[n for n, _ in req.headers])

        up_stream = link.get()
        reusable = False
        try:
            # inner request to the backend, streamed
            headers = end_to_end([(n.decode("latin-1"), v.decode("latin-1")) for n, v in req.headers])
            hosts = [v for n, v in headers if n.lower() == "host"]
            headers = [(n, v) for n, v in headers if n.lower() != "host"]
            # Host: the authority of the control data if any (RFC 9292), else
            # the inner Host field (what upstream's ingress sends), else the backend.
            authority = req.authority.decode("latin-1") or (hosts[0] if hosts else f"{backend[0]}:{backend[1]}")
            has_length = any(n.lower() == "content-length" for n, _ in headers)
            # Peek whether a body follows (BHTTP does not say up front).
            while not events and more:
                more = pull()
            body_follows = bool(events) and isinstance(events[0], bhttp.Data)
            framing = [] if has_length or not body_follows else [("Transfer-Encoding", "chunked")]
            target = req.path.decode("latin-1") or "/"
            request_head = h1.request_head(req.method.decode("latin-1"), target,
                                           [("Host", authority), *headers, *framing])
            up_stream.send(request_head)
            backend_gone = False  # the backend answered (and closed) before reading all of the body

            def to_backend(data: bytes) -> None:
                nonlocal backend_gone
                if backend_gone:
                    return
                try:
                    up_stream.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    backend_gone = True

            while True:
                while events:
                    ev = events.pop(0)
                    if isinstance(ev, bhttp.Data):
                        to_backend(ev.data if has_length or not framing else h1.chunk(ev.data))
                    elif isinstance(ev, bhttp.End):
                        if framing:
                            to_backend(h1.LAST_CHUNK)
                        break
                if inner.done or not more:
                    break
                more = pull()
            if not inner.done:
                raise Refused(400, "encapsulated request ended early")
            # response from the backend, sealed as it streams
            stats.state = "relaying"
            try:
                resp = up_stream.read_head(ResponseHeadParser(), None)
            except (PeerClosed, ConnectionResetError):
                # A reused connection the backend closed just as we sent: a
                # request without a body can safely go again on a fresh one.
                if not link.reused or body_follows:
                    raise
                up_stream = link.fresh()
                up_stream.send(request_head)
                resp = up_stream.read_head(ResponseHeadParser(), None)
            while resp.status < 200:  # 1xx: not forwarded
                resp = up_stream.read_head(ResponseHeadParser(), None)
            encoder = body.decoder.response_encoder()
            stream.hold()  # what is ready together leaves in one write
            try:
                stream.send(h1.response_head(200, "OK", [("Content-Type", RESPONSE_MEDIA_TYPE),
                                                         ("Transfer-Encoding", "chunked")]))
                resp_headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in end_to_end(resp.headers)]
                stream.send_chunk(encoder.write(bhttp.encode_response_head(resp.status, resp_headers)))
                resp_body = resp.body(req.method.decode("latin-1"))
                if not resp_body.done and not up_stream.buffered:
                    stream.flush()  # the backend's body is not here yet: the head goes now
                for piece in up_stream.body(resp_body):
                    # one BHTTP chunk (length, data) per piece, sealed without copying it
                    stream.send_sealed_chunk(encoder, encode_varint(len(piece)), piece)
                # The final OHTTP chunk carries no plaintext: upstream's ingress
                # stalls on one that does (docs/ohttp-wire.md §3.2).
                stream.send_chunk(encoder.write(bhttp.encode_end()) + encoder.finish())
                reusable = (not backend_gone and not resp.wants_close and resp_body.kind != "close"
                            and not up_stream.buffered)
            finally:
                stream.flush()
            try:
                stream.end_chunks()
            except (BrokenPipeError, ConnectionResetError):
                # upstream's ingress may hang up once the final OHTTP chunk is
                # in, before the HTTP last-chunk: the response is complete
                return False
        finally:
            link.release(reusable)
        # The rest of the outer body (the final OHTTP chunk, authenticated
        # here, and the HTTP last-chunk), so that the next request on this
        # connection starts at its head.
        try:
            while more:
                more = pull()
        except (OhttpError, ParseError, OSError):
            return False
        return True

    def _check_client(self, metadata, stats: ConnectionStats) -> None:
        stats.attested = self.security.attester is not None
        if self.binding is None:
            if metadata is not None and metadata.attestation_result is not None:
                raise Refused(400, "the client sent attestation but this egress does not verify clients")
            return
        from tng_nfq.tunnel.ohttp_binding import BindingRefused

        try:
            verdict = self.binding.check_client(metadata)
        except BindingRefused as exc:
            raise Refused(exc.status, exc.message) from None
        if verdict is not None:
            stats.attested = True
            stats.attestation = verdict.as_log_fields()

    def _forward_plain(self, head: h1.Request, stream: HttpStream, stats: ConnectionStats,
                       backend: tuple[str, int], so_mark: int | None, dial) -> bool:
        """An allowed plain request: to the backend and back, in clear."""
        up = self._connect(backend, so_mark, dial, stats)
        try:
            up_stream = HttpStream(up)
            headers = [(n, v) for n, v in end_to_end(head.headers)]
            body = head.body()
            chunked = body.kind == "chunked"
            up_stream.send(h1.request_head(head.method, head.target,
                                           [*headers, *([("Transfer-Encoding", "chunked")] if chunked else []),
                                            ("Connection", "close")]))
            for piece in stream.body(body):
                up_stream.send(h1.chunk(piece) if chunked else piece)
            if chunked:
                up_stream.send(h1.LAST_CHUNK)
            resp = up_stream.read_head(ResponseHeadParser(), None)
            resp_body = resp.body(head.method)
            keep = resp_body.kind != "close"
            framing = [("Transfer-Encoding", "chunked")] if resp_body.kind == "chunked" else []
            stream.send(h1.response_head(resp.status, resp.reason,
                                         [*end_to_end(resp.headers), *framing,
                                          *([] if keep else [("Connection", "close")])]))
            for piece in up_stream.body(resp_body):
                stream.send(h1.chunk(piece) if framing else piece)
            if framing:
                stream.end_chunks()
            return keep
        finally:
            try:
                up.close()
            except OSError:
                pass

    # -- helpers -----------------------------------------------------------------------

    def _connect(self, backend, so_mark, dial, stats) -> socket.socket:
        try:
            return dial(backend, so_mark)
        except OSError as exc:
            raise Refused(502, f"cannot reach backend {stats.upstream}: "
                               f"{(exc.strerror or str(exc)).lower()}") from None

    def _answer(self, stream: HttpStream, status: int, message: str, close: bool, code: str = "") -> None:
        # JSON {"code", "message"} like upstream's egress, so tools that read
        # upstream's refusals read ours.
        body = _json({"code": code or _CODES.get(status, "TngError"), "message": message})
        stream.send(h1.response_head(status, REASONS.get(status, "Error"),
                                     [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body))),
                                      *([("Connection", "close")] if close else [])]) + body)


def _json(obj) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()
