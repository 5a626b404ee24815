"""The admin/control HTTP API (`admin_bind`, `control_interface.restful`).

Read-only views of the running daemon:

- `GET /livez`   200 while the process serves requests at all;
- `GET /readyz`  200 once every endpoint can serve (listeners up, rules in,
  first attested certificate obtained), 503 before;
- `GET /stats`, `GET /status`  per-endpoint JSON: mode, listen address,
  connection and byte counters, attestation state;
- `GET /flows`   live connections (state, bytes, attested) and the NFQUEUE
  classifier's flow table (5-tuple, endpoint, time);
- `GET /metrics` Prometheus text format.

Counters are read at request time from the objects the data path already
keeps; nothing here adds work per packet or per byte. Nothing secret (keys,
tokens, evidence) is ever exposed.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from tng_nfq import __version__
from tng_nfq.config.model import Address
from tng_nfq.tunnel.endpoint import Endpoint, StartError, format_addr

log = structlog.get_logger(component="admin")


def endpoint_view(endpoint: Endpoint) -> dict:
    c = endpoint.counters
    live_up = live_down = 0
    for relay in list(endpoint.relays):
        live_up += relay.stats.bytes_up
        live_down += relay.stats.bytes_down
    view = {
        "id": endpoint.path,
        "type": endpoint.kind,
        "mode": endpoint.mode,
        "listen": [format_addr(listener.address) for listener in endpoint.listeners],
        "connections": {"total": c.total, "active": c.active, "failed": c.failed},
        # bytes from the app client toward the far side / back to the app client
        "bytes": {"up": c.bytes_up + live_up, "down": c.bytes_down + live_down},
        "attestation": attestation_view(endpoint),
    }
    return view


def attestation_view(endpoint: Endpoint) -> dict:
    security = endpoint.security
    view: dict = {"no_ra": security.ra.no_ra}
    if security.attester is not None:
        st = security.attester.status()
        view["attester"] = {
            "ready": st.ready,
            "tee_type": st.tee_type,
            "model": security.attester.cfg.model,
            "last_evidence_at": _iso(st.last_evidence_at),
            "last_error": st.last_error,
        }
    if security.verifier is not None:
        vs = security.verifier.stats
        cfg = security.verifier.cfg
        view["verifier"] = {
            "model": cfg.model,
            "as_addr": cfg.as_addr,
            "policy_ids": list(cfg.policy_ids),
            "verified": vs.ok,
            "rejected": vs.failed,
            "cache_hits": vs.cache_hits,
            "last_result": vs.last_result,
            "last_at": _iso(vs.last_at),
        }
    return view


def flows_view(endpoints: list[Endpoint]) -> list[dict]:
    flows = []
    now = time.time()
    for endpoint in endpoints:
        for relay in list(endpoint.relays):
            s = relay.stats
            flows.append({
                "id": s.id, "endpoint": s.endpoint, "mode": s.mode, "state": s.state,
                "downstream": s.downstream, "listener": s.listener, "upstream": s.upstream,
                "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
                "age_s": round(now - s.started, 3), "encrypted": s.encrypted, "attested": s.attested,
                "peer_attestation": s.attestation,
            })
    return flows


class _Collector:
    """Prometheus view built at scrape time from the endpoints' own counters."""

    def __init__(self, endpoints: list[Endpoint]):
        self.endpoints = endpoints

    def collect(self):
        labels = ["type", "id", "mode"]
        cx_total = CounterMetricFamily("tng_cx", "Connections accepted", labels=labels)
        cx_failed = CounterMetricFamily("tng_cx_failed", "Connections that ended in an error", labels=labels)
        cx_active = GaugeMetricFamily("tng_cx_active", "Connections open now", labels=labels)
        rx = CounterMetricFamily("tng_rx_bytes", "Application bytes received from the downstream (app) side",
                                 labels=labels)
        tx = CounterMetricFamily("tng_tx_bytes", "Application bytes sent to the downstream (app) side",
                                 labels=labels)
        verify = CounterMetricFamily("tng_attestation_verify", "Peer attestation verifications",
                                     labels=labels + ["result"])
        evidence_ready = GaugeMetricFamily("tng_attestation_certificate_ready",
                                           "1 when the attester holds a current attested certificate",
                                           labels=labels)
        for endpoint in self.endpoints:
            view = endpoint_view(endpoint)
            lv = [view["type"], view["id"], view["mode"]]
            cx_total.add_metric(lv, view["connections"]["total"])
            cx_failed.add_metric(lv, view["connections"]["failed"])
            cx_active.add_metric(lv, view["connections"]["active"])
            rx.add_metric(lv, view["bytes"]["up"])
            tx.add_metric(lv, view["bytes"]["down"])
            att = view["attestation"]
            if "verifier" in att:
                verify.add_metric(lv + ["ok"], att["verifier"]["verified"])
                verify.add_metric(lv + ["rejected"], att["verifier"]["rejected"])
            if "attester" in att:
                evidence_ready.add_metric(lv, 1 if att["attester"]["ready"] else 0)
        yield from (cx_total, cx_failed, cx_active, rx, tx, verify, evidence_ready)


class AdminServer:
    def __init__(self, address: Address, endpoints: list[Endpoint], ready: threading.Event,
                 extra_status=None, classified_flows=None):
        self.address = address
        self.endpoints = endpoints
        self.ready = ready
        self.extra_status = extra_status  # callable -> dict merged into /status (e.g. netfilter)
        self.classified_flows = classified_flows  # callable -> NFQUEUE flow table entries
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(endpoints))
        self.started_at = time.time()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        handler = _make_handler(self)
        try:
            self._server = ThreadingHTTPServer((self.address.host, self.address.port), handler)
        except OSError as exc:
            raise StartError(f"admin_bind: cannot listen on {self.address}: "
                             f"{(exc.strerror or str(exc)).lower()}") from None
        self._server.daemon_threads = True
        if self.address.host in ("0.0.0.0", "::"):
            log.warning("the admin API listens on all interfaces; it has no authentication",
                        address=str(self.address))

    def start(self) -> None:
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin", daemon=True)
        self._thread.start()
        log.info("admin API listening", address=format_addr(self._server.server_address))

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:  # shutdown() waits for a serve loop that must exist
                self._server.shutdown()
                self._thread.join(5)
            self._server.server_close()
            self._server = None

    def status(self) -> dict:
        body = {
            "version": __version__,
            "ready": self.ready.is_set(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "ingress": [endpoint_view(e) for e in self.endpoints if e.kind == "ingress"],
            "egress": [endpoint_view(e) for e in self.endpoints if e.kind == "egress"],
        }
        if self.extra_status is not None:
            body.update(self.extra_status())
        return body


def _make_handler(admin: AdminServer):
    class Handler(BaseHTTPRequestHandler):
        server_version = f"tng-nfq/{__version__}"

        def log_message(self, fmt, *args):  # requests are not access-logged
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj) -> None:
            self._send(code, json.dumps(obj, indent=2).encode() + b"\n", "application/json")

        def do_GET(self):  # noqa: N802 - http.server naming
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/livez":
                self._send(200, b"live\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ok = admin.ready.is_set()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain; charset=utf-8")
            elif path in ("/stats", "/status"):
                self._json(200, admin.status())
            elif path == "/flows":
                classified = admin.classified_flows() if admin.classified_flows else []
                self._json(200, {"flows": flows_view(admin.endpoints), "classified": classified})
            elif path == "/metrics":
                self._send(200, generate_latest(admin.registry), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": "not found",
                                 "paths": ["/livez", "/readyz", "/stats", "/status", "/flows", "/metrics"]})

        do_HEAD = do_GET

    return Handler


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
