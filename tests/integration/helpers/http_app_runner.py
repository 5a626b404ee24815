"""Starts helpers/http_app.py in the lab's server namespace."""

from __future__ import annotations

import sys
from pathlib import Path

from tng_nfq.lab.netns import wait_for_port

APP = Path(__file__).with_name("http_app.py")


def start_app(lab, port: int, ns=None):
    """On all addresses: a netfilter egress dials the original destination."""
    ns = ns or lab.server
    proc = lab.lab.spawn(ns, [sys.executable, str(APP), str(port), "0.0.0.0"])
    wait_for_port(ns, "127.0.0.1", port, timeout=lab.WAIT, proc=proc)
    return proc
