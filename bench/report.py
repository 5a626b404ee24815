"""Result assembly, the stdout table, results.json and throughput.png.

Everything except `write_json` and `plot_throughput` is a pure function.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Mapping, Sequence

from . import BASELINE, HEADLINE

GBIT = 1e9


def median(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def peer_status(samples: Mapping[int, Sequence[float]], errors: Sequence[str],
                expected: int) -> str:
    """"ok" (every planned sample measured), "partial" (some, or errors on the way),
    "failed" (none, with errors) or "not run" (none, no error: the run stopped before it)."""
    got = sum(len(v) for v in samples.values())
    if got == 0:
        return "failed" if errors else "not run"
    if got < expected or errors:
        return "partial"
    return "ok"


def build_results(*, peers: Sequence[str], streams: Sequence[int], reps: int,
                  samples: Mapping[str, Mapping[int, Sequence[float]]],
                  errors: Mapping[str, Sequence[str]],
                  machine: Mapping | None = None, params: Mapping | None = None,
                  extra_peer_info: Mapping[str, Mapping] | None = None) -> dict:
    """The content of results.json: per peer per stream count samples and median, plus ratios.

    Stream counts become string keys ("1", "8") so the dict survives a JSON round trip unchanged.
    """
    out: dict = {"schema": 1, "machine": dict(machine or {}), "params": dict(params or {}),
                 "peers": {}, "ratios": {}}
    medians: dict[str, dict[int, float | None]] = {}
    for peer in peers:
        per = samples.get(peer, {})
        errs = list(errors.get(peer, []))
        entry: dict = {"status": peer_status(per, errs, reps * len(streams)),
                       "errors": errs, "streams": {}}
        entry.update(dict((extra_peer_info or {}).get(peer, {})))
        medians[peer] = {}
        for s in streams:
            vals = [float(v) for v in per.get(s, [])]
            med = median(vals)
            medians[peer][s] = med
            entry["streams"][str(s)] = {
                "samples_bps": vals,
                "n": len(vals),
                "median_bps": med,
                "median_gbps": None if med is None else round(med / GBIT, 4),
                "min_bps": min(vals) if vals else None,
                "max_bps": max(vals) if vals else None,
            }
        out["peers"][peer] = entry

    num, den = HEADLINE
    out["ratios"]["headline"] = {
        "numerator": num, "denominator": den,
        "by_streams": {str(s): ratio(medians.get(num, {}).get(s), medians.get(den, {}).get(s))
                       for s in streams},
    }
    out["ratios"][f"vs_{BASELINE}"] = {
        peer: {str(s): ratio(medians[peer].get(s), medians.get(BASELINE, {}).get(s))
               for s in streams}
        for peer in peers
    }
    return out


def _fmt_gbps(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / GBIT:.2f}"


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def _streams_label(s: int) -> str:
    return f"{s} stream" + ("" if s == 1 else "s")


def format_table(results: Mapping) -> str:
    """A plain-text summary: median Gbit/s (n samples) per peer and stream count, ratios."""
    peers = list(results["peers"])
    streams = [int(s) for s in next(iter(results["peers"].values()))["streams"]] if peers else []
    vs = results["ratios"].get(f"vs_{BASELINE}", {})
    header = ["peer"] + [f"{_streams_label(s)} Gbit/s" for s in streams] \
        + [f"/{BASELINE} ({_streams_label(s)})" for s in streams] + ["status"]
    rows = [header]
    for peer in peers:
        entry = results["peers"][peer]
        row = [peer]
        for s in streams:
            st = entry["streams"][str(s)]
            row.append(f"{_fmt_gbps(st['median_bps'])} (n={st['n']})")
        for s in streams:
            row.append(_fmt_ratio(vs.get(peer, {}).get(str(s))))
        row.append(entry["status"])
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))

    head = results["ratios"]["headline"]
    parts = [f"{_streams_label(int(s))} {_fmt_ratio(r)}" for s, r in head["by_streams"].items()]
    lines.append("")
    lines.append(f"headline {head['numerator']} / {head['denominator']}: " + ", ".join(parts))
    for peer in peers:
        entry = results["peers"][peer]
        if entry["errors"]:
            first = entry["errors"][0].splitlines()[0]
            more = f" (+{len(entry['errors']) - 1} more)" if len(entry["errors"]) > 1 else ""
            lines.append(f"{peer} {entry['status']}: {first}{more}")
    return "\n".join(lines)


def write_json(results: Mapping, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def plot_throughput(results: Mapping, path: Path) -> None:
    """Grouped bars: one group per peer, one bar per stream count; medians with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(results["peers"])
    streams = [int(s) for s in next(iter(results["peers"].values()))["streams"]] if peers else []
    vs = results["ratios"].get(f"vs_{BASELINE}", {})
    head = results["ratios"]["headline"]
    width = 0.8 / max(1, len(streams))
    fig, ax = plt.subplots(figsize=(11, 5.8))
    top = 0.0
    for j, s in enumerate(streams):
        xs, hs, lo, hi, names, tops = [], [], [], [], [], []
        for i, peer in enumerate(peers):
            st = results["peers"][peer]["streams"][str(s)]
            if st["median_bps"] is None:
                continue
            med = st["median_bps"] / GBIT
            xs.append(i - 0.4 + width * (j + 0.5))
            hs.append(med)
            lo.append(med - st["min_bps"] / GBIT)
            hi.append(st["max_bps"] / GBIT - med)
            names.append(peer)
            tops.append(st["max_bps"] / GBIT)
            top = max(top, st["max_bps"] / GBIT)
        bars = ax.bar(xs, hs, width * 0.92, yerr=[lo, hi], capsize=3, label=_streams_label(s),
                      color=f"C{j}")
        for bar, peer, y in zip(bars, names, tops):
            label = f"{bar.get_height():.2f}"
            r = vs.get(peer, {}).get(str(s))
            if peer != BASELINE and r is not None:
                label += f"\n{r:.2f}x {BASELINE}"
            if peer == head["numerator"] and head["by_streams"].get(str(s)) is not None:
                short = head["denominator"].split("-")[0]  # "upstream-tng" -> "upstream"
                label += f"\n{head['by_streams'][str(s)]:.2f}x {short}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y),
                        xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7.5)
    for i, peer in enumerate(peers):
        status = results["peers"][peer]["status"]
        if status in ("failed", "not run"):
            ax.text(i, 0, f"{status}\n(see results.json)", ha="center", va="bottom",
                    color="firebrick", fontsize=9)
    ax.set_xticks(range(len(peers)), peers)
    ax.set_xlim(-0.6, len(peers) - 0.4)
    ax.set_ylabel("median throughput (Gbit/s)")
    ax.set_ylim(0, max(top * 1.3, 1.0))
    ax.legend(loc="upper right")
    m, p = results.get("machine", {}), results.get("params", {})
    ax.set_title(f"iperf3 over loopback in a private netns - {m.get('nproc', '?')} CPUs, "
                 f"kernel {m.get('kernel', '?')}; {p.get('reps', '?')} reps x "
                 f"{p.get('duration', '?')} s, whiskers = min..max", fontsize=10)
    parts = [f"{_streams_label(int(k))} {_fmt_ratio(r)}" for k, r in head["by_streams"].items()]
    ax.text(0.01, 0.98, f"{head['numerator']} / {head['denominator']}: " + ", ".join(parts),
            transform=ax.transAxes, ha="left", va="top", fontsize=10, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
