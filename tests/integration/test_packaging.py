"""Packaging: the sdist and the wheel carry the package data and install into
a fresh venv (dependencies from the index) with a working `tng-nfq`; `make
dist`'s tarball unpacks into /opt/tng-nfq-<version>/ and runs from there.

The tarball's venv lives at /opt/tng-nfq-<version> (absolute paths), so it is
unpacked into a scratch root and run inside a private mount namespace with
the scratch opt bind-mounted on /opt (root): the real / is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tng_nfq import __version__

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "packaging" / "etc" / "tng-nfq" / "config.json"
DATA = {"tng_nfq/data/no_ra_cert.pem", "tng_nfq/data/no_ra_key.pem"}
TIMEOUT = 300


def _run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", TIMEOUT)
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """sdist and wheel of the work tree (python -m build: the wheel is built from the sdist)."""
    try:
        import build  # noqa: F401
    except ImportError:
        pytest.skip("`build` is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("built")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


def test_package_data_in_sdist_and_wheel(built):
    with tarfile.open(built["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert DATA <= names
    assert {"packaging/systemd/tng-nfq.service", "packaging/etc/tng-nfq/config.json", "README.md"} <= names
    assert not any("__pycache__" in name or name.startswith(("tests/", ".venv/")) for name in names)

    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
    assert DATA <= names
    assert "tng_nfq/cli.py" in names
    assert not any(name.startswith("tests/") for name in names)


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installs_in_fresh_venv(built, kind, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", built[kind]])
    exe = venv / "bin" / "tng-nfq"

    assert _run([exe, "--version"]).stdout.strip() == f"tng-nfq, version {__version__}"
    assert _run([exe, "check", "--config-file", CONFIG]).stdout.startswith("configuration OK")
    # the package data came along (the no_ra certificate is read from it)
    _run([venv / "bin" / "python", "-I", "-c",
          "import importlib.resources as r; "
          "assert r.files('tng_nfq').joinpath('data/no_ra_cert.pem').read_text().startswith('-----BEGIN')"],
         cwd=tmp_path)


@pytest.mark.root
def test_dist_tarball_unpacks_into_opt_and_runs(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("`unshare` is not installed (util-linux)")
    out = tmp_path / "dist"
    env = {**os.environ, "DIST_DIR": str(out)}
    _run([ROOT / "packaging" / "build-dist.sh"], env=env, cwd=ROOT)
    name = f"tng-nfq-{__version__}"
    tarball = out / f"{name}.tar.gz"
    assert tarball.is_file()

    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    assert all(m.name == f"opt/{name}" or m.name.startswith(f"opt/{name}/") for m in members)
    assert all(m.uid == 0 and m.gid == 0 for m in members)

    scratch = tmp_path / "root"
    scratch.mkdir()
    _run(["tar", "-xf", tarball, "-C", scratch])
    prefix = scratch / "opt" / name
    assert (prefix / "bin" / "tng-nfq").is_file()
    assert (prefix / "share" / "tng-nfq" / "tng-nfq.service").is_file()
    assert f"/opt/{name}/bin/tng-nfq" in (prefix / "share" / "tng-nfq" / "tng-nfq.service").read_text()
    # nothing in it remembers where it was built
    assert f"/opt/{name}" in (prefix / "pyvenv.cfg").read_text()
    assert (prefix / "bin" / "tng-nfq").read_text().splitlines()[0] == f"#!/opt/{name}/bin/python"

    # run it where it belongs: the scratch opt on /opt, in a private mount namespace
    script = (
        'set -eu\n'
        'mount --bind "$1/opt" /opt\n'
        f'/opt/{name}/bin/tng-nfq --version\n'
        f'/opt/{name}/bin/tng-nfq check --config-file /opt/{name}/share/tng-nfq/config.json\n'
        f'/opt/{name}/bin/python -I -c "import netfilterqueue, pyroute2, OpenSSL, grpc, tng_nfq.daemon; '
        'print(tng_nfq.daemon.__file__)"\n'
    )
    proc = _run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "sh", scratch],
                cwd=scratch)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"tng-nfq, version {__version__}"
    assert lines[1].startswith("configuration OK")
    assert lines[2].startswith(f"/opt/{name}/lib/python3")

    # uninstall is one rm -rf
    shutil.rmtree(prefix)
    assert not any((scratch / "opt").iterdir())
