"""Headless Chromium for the web_page_inject tests (Debian's chromium package;
nothing is downloaded).

- `screenshot(url, out_png, ns_name=None, width=1200, height=800)` renders
  a page into a PNG; `dom(url, ns_name=None)` returns the DOM after parsing
  (`--dump-dom`). With `ns_name` Chromium runs inside that network namespace
  (`ip netns exec`), which is how the tests use it: a page on 127.0.0.1 of a
  throw-away namespace, never the host's network.
- Every run gets a fresh --user-data-dir (and HOME) in a temporary
  directory, has a timeout, runs in its own process group and that group
  is SIGKILLed afterwards (renderers, zygotes, crashpad do not linger).
- `png_size(path)` and `png_rows(path, rows)` read a PNG with the standard
  library only (zlib), enough to check what the screenshot shows.
- `needs_chromium`: a pytest mark that skips only when /usr/bin/chromium is
  missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_TIMEOUT = 60.0

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed "
                                    "(Debian package chromium)")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-default-browser-check", "--disable-default-apps", "--disable-extensions",
    "--disable-domain-reliability", "--disable-breakpad", "--disable-dev-shm-usage",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
)


class BrowserError(RuntimeError):
    pass


def _run(extra: list[str], url: str, ns_name: str | None, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="tngnfq-chromium-") as tmp:
        profile = Path(tmp) / "profile"
        profile.mkdir()
        argv = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url]
        if ns_name is not None:
            argv = ["ip", "netns", "exec", ns_name, *argv]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(HOME=tmp, XDG_CONFIG_HOME=tmp, XDG_CACHE_HOME=tmp, TMPDIR=tmp)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout}s: "
                               f"{err.decode(errors='replace')[-2000:]}") from None
        finally:
            _kill_group(proc.pid)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def screenshot(url: str, out_png: Path, ns_name: str | None = None, width: int = 1200,
               height: int = 800, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Render `url` into `out_png` (width x height viewport); returns the path."""
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        out_png.unlink()
    # Chromium may write the file as another user's view of the path inside a
    # namespace: the mount namespace is shared with `ip netns exec`, so a
    # plain absolute path works.
    proc = _run([f"--screenshot={out_png}", f"--window-size={width},{height}"], url, ns_name, timeout)
    if not out_png.exists() or out_png.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return out_png


def dom(url: str, ns_name: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The serialized DOM of `url` after Chromium parsed (and ran) it."""
    proc = _run(["--dump-dom"], url, ns_name, timeout)
    text = proc.stdout.decode("utf-8", errors="replace")
    if proc.returncode != 0 or not text.strip():
        raise BrowserError(f"chromium --dump-dom failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return text


# ---- a minimal PNG reader --------------------------------------------------------

def _chunks(data: bytes):
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError("not a PNG file")
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    for kind, body in _chunks(Path(path).read_bytes()):
        if kind == b"IHDR":
            return struct.unpack(">II", body[:8])
    raise BrowserError("PNG without IHDR")


def png_rows(path: Path, rows: int | None = None) -> list[list[tuple[int, int, int]]]:
    """The first `rows` rows (all when None) as lists of (r, g, b); 8-bit
    RGB/RGBA, non-interlaced PNGs (what Chromium writes)."""
    data = Path(path).read_bytes()
    ihdr = None
    idat = bytearray()
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat += body
    if ihdr is None:
        raise BrowserError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = ihdr
    if depth != 8 or color not in (2, 6) or interlace:
        raise BrowserError(f"unsupported PNG (depth {depth}, colour type {color}, interlace {interlace})")
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    n = height if rows is None else min(rows, height)
    raw = zlib.decompressobj().decompress(bytes(idat), n * (stride + 1))
    out = []
    prev = bytearray(stride)
    for r in range(n):
        line = raw[r * (stride + 1):(r + 1) * (stride + 1)]
        ftype, cur = line[0], bytearray(line[1:])
        if ftype == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                cur[i] = (cur[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (cur[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 0xFF
        elif ftype != 0:
            raise BrowserError(f"bad PNG filter type {ftype}")
        out.append([tuple(cur[i:i + 3]) for i in range(0, stride, bpp)])
        prev = cur
    return out


def copy_artifact(path: Path, name: str | None = None) -> Path | None:
    """Also keep `path` under $TNG_NFQ_ARTIFACTS (when set); returns the copy."""
    target_dir = os.environ.get("TNG_NFQ_ARTIFACTS")
    if not target_dir:
        return None
    target = Path(target_dir) / (name or Path(path).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target
