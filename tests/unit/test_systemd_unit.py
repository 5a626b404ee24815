"""The shipped systemd unit and example configuration: the unit is what
systemd-analyze accepts (when installed), runs the tarball's binary of this
version as Type=notify, and the example configuration passes `tng-nfq check`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from tng_nfq import __version__
from tng_nfq.cli import main

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "tng-nfq.service"
CONFIG = ROOT / "packaging" / "etc" / "tng-nfq" / "config.json"
BINARY = f"/opt/tng-nfq-{__version__}/bin/tng-nfq"


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_runs_this_versions_tarball_binary_as_notify():
    unit = _directives(UNIT.read_text())

    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == [f"{BINARY} --log-format json launch --config-file /etc/tng-nfq/config.json"]
    assert unit["ExecStopPost"] == [f"{BINARY} rules flush"]
    assert unit["Restart"] == ["on-failure"]
    assert set(unit["AmbientCapabilities"][0].split()) >= {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(unit["CapabilityBoundingSet"][0].split()) >= {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert "AF_NETLINK" in unit["RestrictAddressFamilies"][0]
    assert "PrivateNetwork" not in unit  # the rules belong in the host's namespace
    # every mention of the install prefix names this version
    assert set(re.findall(r"/opt/tng-nfq-[^/\s]+", UNIT.read_text())) == {f"/opt/tng-nfq-{__version__}"}


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; scripts/install-system-deps.sh)")
    # verify wants the binaries to exist: a copy that runs this environment's tng-nfq
    exe = Path(sys.executable).parent / "tng-nfq"
    if not exe.exists():
        pytest.skip("`tng-nfq` is not installed in this environment (pip install -e '.[test]')")
    copy = tmp_path / "tng-nfq.service"
    copy.write_text(UNIT.read_text().replace(BINARY, str(exe)))

    proc = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)

    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "tng-nfq.service" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_example_config_passes_check():
    try:
        result = CliRunner().invoke(main, ["check", "--config-file", str(CONFIG)], catch_exceptions=False)
    finally:
        structlog.reset_defaults()

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("configuration OK")
