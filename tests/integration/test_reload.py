"""SIGHUP: a good configuration file is applied (new endpoints start, removed
ones drain, unchanged ones keep their connections); a bad one is refused
and the running configuration stays."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

pytestmark = pytest.mark.root

TUNNEL_A, TUNNEL_B, BACKEND = 20001, 20002, 30001
IN_A, IN_B = 10001, 10002


def _ingress(*pairs) -> dict:
    return {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": listen},
                                         "out": {"host": "198.18.0.2", "port": tunnel}}, "no_ra": True}
                            for listen, tunnel in pairs]}


def _events(path, event):
    out = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


def test_sighup_applies_good_config_and_refuses_bad(lab):
    lab.start_backend(BACKEND)
    lab.start_nfq(lab.server, lab.egress_config((TUNNEL_A, BACKEND), (TUNNEL_B, BACKEND)), "egress")

    cfg_path = lab.workdir / "ingress.json"
    cfg_path.write_text(json.dumps(_ingress((IN_A, TUNNEL_A))))
    log_path = lab.workdir / "ingress.log"
    from tng_nfq.lab.netns import wait_for_log_event

    proc = lab.lab.spawn(lab.client, [lab.nfq_argv({})[0], "--log-format", "json", "launch",
                                      "--config-file", str(cfg_path)],
                         stdout=subprocess.DEVNULL, stderr=log_path.open("w"))
    wait_for_log_event(log_path, "ready", proc)

    # a connection through A stays open across the reload that removes A
    held = lab.connect(IN_A)
    held.sendall(b"ECHO\nbefore ")
    assert held.recv(100) == b"before "

    cfg_path.write_text(json.dumps(_ingress((IN_B, TUNNEL_B))))
    proc.send_signal(signal.SIGHUP)
    reloaded = lab.poll_until(lambda: _events(log_path, "reloaded"), "reloaded", proc=proc)[0]
    assert reloaded["added"] == ["add_ingress[0]"] and reloaded["removed"] == ["add_ingress[0]"]

    assert lab.echo(IN_B, b"through B") == b"through B"  # the new endpoint serves
    with pytest.raises(ConnectionRefusedError):  # the removed one accepts no more
        lab.connect(IN_A)
    held.sendall(b"after")  # ... but its open connection is drained, not cut
    assert held.recv(100) == b"after"
    held.shutdown(1)
    assert lab.recv_all(held) == b""
    held.close()
    lab.poll_until(lambda: _events(log_path, "drained"), "A drained", proc=proc)

    # a broken file is refused; B keeps serving
    cfg_path.write_text('{"add_ingress": [{"mapping": {"in": {"port": 0}}}]}')
    proc.send_signal(signal.SIGHUP)
    refused = lab.poll_until(lambda: [e for e in _events(log_path, "reload refused; the running "
                                                         "configuration stays")], "refused", proc=proc)[0]
    assert "add_ingress[0].mapping" in refused["error"]
    assert lab.echo(IN_B, b"still B") == b"still B"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
