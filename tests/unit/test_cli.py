"""The `tng-nfq` command line, driven in-process with click's CliRunner (no root).

Only commands that stop before binding anything are run here: `check`,
`--version`, and `launch` invocations that are refused during option or
configuration handling.
"""

from __future__ import annotations

import json

import pytest
import structlog
from click.testing import CliRunner

from tng_nfq import __version__
from tng_nfq.cli import main

INGRESS = {"mapping": {"in": {"host": "127.0.0.1", "port": 10001},
                       "out": {"host": "198.18.0.2", "port": 20001}}, "no_ra": True}
EGRESS = {"mapping": {"in": {"host": "198.18.0.2", "port": 20001},
                      "out": {"host": "127.0.0.1", "port": 30001}}, "no_ra": True}
GOOD = json.dumps({"add_ingress": [INGRESS], "add_egress": [EGRESS]})


@pytest.fixture(autouse=True)
def _reset_logging():
    # main() points structlog at CliRunner's temporary stderr; do not leak that.
    yield
    structlog.reset_defaults()


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def error_lines(result) -> list[str]:
    return result.stderr.splitlines()


def test_version():
    result = run("--version")

    assert result.exit_code == 0
    assert result.stdout.strip() == f"tng-nfq, version {__version__}"


def test_check_good_config():
    result = run("check", "--config-content", GOOD)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "configuration OK: 1 ingress, 1 egress"
    assert result.stderr == ""


def test_check_good_config_file_with_comments(tmp_path):
    path = tmp_path / "tng.jsonc"
    path.write_text('{\n  // client side\n  "add_ingress": [' + json.dumps(INGRESS) + "],\n}\n")

    result = run("check", "--config-file", str(path))

    assert result.exit_code == 0, result.output
    assert "configuration OK: 1 ingress, 0 egress" in result.stdout


BAD = [
    pytest.param({"add_ingress": [{**INGRESS, "mapping": {"in": {"port": 70000},
                                                          "out": {"host": "1.2.3.4", "port": 1}}}]},
                 "add_ingress[0].mapping.in.port", "65535", id="port-out-of-range"),
    pytest.param({"add_egress": [{**EGRESS, "bogus": 1}]},
                 "add_egress[0].bogus", "unknown key", id="unknown-key"),
    pytest.param({"add_ingress": [{"mapping": {"in": {"port": 10001}}, "no_ra": True}]},
                 "add_ingress[0].mapping.out", "missing", id="missing-out"),
    pytest.param({"add_ingress": [{"mapping": INGRESS["mapping"]}]},
                 "add_ingress[0]", "no_ra", id="no-ra-role"),
    pytest.param('{"add_ingress": [', "config", "line 1", id="json-syntax"),
    pytest.param({"add_egress": [{**EGRESS, "mapping": {**EGRESS["mapping"], "out": {"host": "127.0.0.1",
                                                                                      "port": "x"}}}]},
                 "add_egress[0].mapping.out.port", "integer", id="port-not-a-number"),
]


@pytest.mark.parametrize("document, path, words", BAD)
def test_check_bad_config_one_line_with_json_path(document, path, words):
    text = document if isinstance(document, str) else json.dumps(document)

    result = run("check", "--config-content", text)

    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tng-nfq: error: {path}: "), lines[0]
    assert words in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("document, path, words", BAD[:2])
def test_launch_bad_config_refused_before_start(document, path, words):
    result = run("launch", "--config-content", json.dumps(document))

    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"tng-nfq: error: {path}: "), result.stderr


@pytest.mark.parametrize("command", ["launch", "check"])
def test_both_config_options_is_a_usage_error(command):
    result = run(command, "--config-file", "/nonexistent/tng.json", "--config-content", GOOD)

    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert "exactly one of --config-file and --config-content" in result.stderr


@pytest.mark.parametrize("command", ["launch", "check"])
def test_neither_config_option_is_a_usage_error(command):
    result = run(command)

    assert result.exit_code == 2
    assert "Usage:" in result.stderr
    assert "exactly one of --config-file and --config-content" in result.stderr


def test_check_valid_but_not_available_feature():
    config = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": 41000},
                                           "out": {"host": "127.0.0.1", "port": 30001}},
                               "verify": {"as_type": "builtin", "policy_ids": ["default"]}}]}

    result = run("check", "--config-content", json.dumps(config))

    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tng-nfq: error: add_ingress[0].verify.as_type: "), lines[0]
    assert "not available in tng_nfq" in lines[0]
    assert result.stdout == ""


def test_check_encapsulation_config_is_accepted():
    config = {"add_ingress": [{"mapping": {"in": {"host": "127.0.0.1", "port": 41000},
                                           "out": {"host": "127.0.0.1", "port": 30001}},
                               "encap_in_http": {}, "no_ra": True}]}

    result = run("check", "--config-content", json.dumps(config))

    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["launch", "check"])
def test_missing_config_file(command, tmp_path):
    missing = tmp_path / "nope" / "tng.json"

    result = run(command, "--config-file", str(missing))

    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tng-nfq: error: config: "), lines[0]
    assert str(missing) in lines[0] and "No such file" in lines[0]
