"""`tng-nfq rules show` in-process with CliRunner (no root: it only prints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from tng_nfq.cli import main

MANUAL = Path(__file__).parent.parent / "data" / "manual"
EGRESS = {"add_egress": [{"netfilter": {"capture_dst": {"port": 30001}, "listen_port": 41234},
                          "no_ra": True}]}


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    structlog.reset_defaults()


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_show_config_content_prints_exact_install_text(monkeypatch):
    monkeypatch.setenv("TNG_NFQ_QUEUES", "0")  # no classifier: the nat steering alone
    result = run("rules", "show", "--config-content", json.dumps(EGRESS))

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "# add_egress[0]: egress netfilter, listen_port 41234, so_mark 565, steering redirect, no classifier\n"
        "# install (iptables-restore --noflush)\n"
        "*nat\n"
        ":TNGNFQ_PREROUTING - [0:0]\n"
        ":TNGNFQ_EGRESS0 - [0:0]\n"
        "-A TNGNFQ_PREROUTING -m addrtype ! --src-type LOCAL -j TNGNFQ_EGRESS0\n"
        "-A TNGNFQ_EGRESS0 -m mark --mark 0x235 -j RETURN\n"
        "-A TNGNFQ_EGRESS0 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 30001 -j REDIRECT --to-ports 41234\n"
        "-I PREROUTING 1 -p tcp -j TNGNFQ_PREROUTING\n"
        "COMMIT\n")


def test_show_uses_one_classifier_queue_per_cpu_unless_told(monkeypatch):
    monkeypatch.setenv("TNG_NFQ_QUEUES", "1")
    one = run("rules", "show", "--config-content", json.dumps(EGRESS)).stdout
    monkeypatch.delenv("TNG_NFQ_QUEUES")
    default = run("rules", "show", "--config-content", json.dumps(EGRESS)).stdout

    assert "-j NFQUEUE --queue-num 5650 --queue-bypass" in one
    n = os.cpu_count() or 1
    target = "--queue-num 5650" if n == 1 else f"--queue-balance 5650:{5650 + n - 1}"
    assert f"-j NFQUEUE {target} --queue-bypass" in default


def test_show_removal():
    result = run("rules", "show", "--removal", "--config-content", json.dumps(EGRESS))

    assert result.exit_code == 0, result.output
    assert "-D PREROUTING -p tcp -j TNGNFQ_PREROUTING\n-F TNGNFQ_PREROUTING\n" in result.stdout
    assert "-I " not in result.stdout


def test_show_config_file_with_automatic_listen_port_says_so():
    result = run("rules", "show", "--config-file", str(MANUAL / "example_04_egress_netfilter.json"))

    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("# add_egress[0]: no listen_port configured; a start now would take ")
    assert "-j REDIRECT --to-ports " in result.stdout


def test_show_without_netfilter_endpoints():
    result = run("rules", "show", "--config-file", str(MANUAL / "example_05_no_ra.json"))

    assert result.exit_code == 0
    assert result.stdout == "# no netfilter endpoint in this configuration: no rules\n"


def test_show_rejects_a_bad_config_with_the_json_path():
    bad = {"add_egress": [{"netfilter": {"capture_dst": {"port": 0}}, "no_ra": True}]}
    result = run("rules", "show", "--config-content", json.dumps(bad))

    assert result.exit_code == 2
    assert "add_egress[0].netfilter.capture_dst.port" in result.stderr
