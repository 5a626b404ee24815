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


# -- connection-rate suite ------------------------------------------------------


def cpu_ms_per_conn(sample: Mapping) -> dict[str, float | None]:
    """CPU milliseconds per completed exchange, per watched process and for the generator."""
    ok = sample.get("ok") or 0
    cpu = sample.get("cpu") or {}
    out: dict[str, float | None] = {}
    if ok <= 0:
        return out
    for role, secs in (cpu.get("procs_cpu_s") or {}).items():
        out[role] = None if secs is None else round(1e3 * secs / ok, 4)
    if cpu.get("loadgen_cpu_s") is not None:
        out["loadgen"] = round(1e3 * cpu["loadgen_cpu_s"] / ok, 4)
    if out.get("ingress") is not None and out.get("egress") is not None:
        out["tunnel"] = round(out["ingress"] + out["egress"], 4)
    return out


def other_cpu_pct(sample: Mapping) -> float | None:
    """CPU busy on the machine during the window but not used by any process of ours, in % of one core.

    That is other work on the machine plus kernel time not charged to a process (e.g. softirq)."""
    cpu = sample.get("cpu") or {}
    busy, ncpu, wall = cpu.get("machine_busy_pct"), cpu.get("machine_cpus"), cpu.get("wall_s")
    if busy is None or not ncpu or not wall:
        return None
    ours = (cpu.get("loadgen_cpu_s") or 0.0) + sum(v for v in (cpu.get("procs_cpu_s") or {}).values() if v)
    return round(max(0.0, busy * ncpu - 100.0 * ours / wall), 1)


def _median_of(samples: Sequence[Mapping], getter) -> float | None:
    vals = []
    for s in samples:
        try:
            v = getter(s)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            vals.append(v)
    return median(vals)


def build_connrate_results(*, peers: Sequence[str], reps: int, samples: Mapping[str, Sequence[Mapping]],
                           errors: Mapping[str, Sequence[str]], headlines: Mapping[str, tuple[str, str]],
                           params: Mapping | None = None,
                           extra_peer_info: Mapping[str, Mapping] | None = None) -> dict:
    """The `connrate` part of results.json: per peer the samples, medians and CPU cost; ratios."""
    out: dict = {"params": dict(params or {}), "peers": {}, "ratios": {}}
    medians: dict[str, float | None] = {}
    for peer in peers:
        got = list(samples.get(peer, []))
        errs = list(errors.get(peer, []))
        rates = [float(s["conn_per_s"]) for s in got]
        med = median(rates)
        medians[peer] = med
        roles = sorted({r for s in got for r in cpu_ms_per_conn(s)})
        entry: dict = {
            "status": peer_status({0: rates}, errs, reps),
            "errors": errs,
            "n": len(rates),
            "samples_conn_per_s": rates,
            "median_conn_per_s": med,
            "min_conn_per_s": min(rates) if rates else None,
            "max_conn_per_s": max(rates) if rates else None,
            "failed_exchanges": sum(int(s.get("failed") or 0) for s in got),
            "median_latency_ms": {p: _median_of(got, lambda s, p=p: s["latency_ms"][p])
                                  for p in ("p50", "p90", "p99")},
            "median_loadgen_cpu_pct": _median_of(got, lambda s: s["cpu"]["loadgen_pct"]),
            "median_machine_busy_pct": _median_of(got, lambda s: s["cpu"]["machine_busy_pct"]),
            "median_other_cpu_pct": _median_of(got, other_cpu_pct),
            "median_cpu_ms_per_conn": {r: _median_of(got, lambda s, r=r: cpu_ms_per_conn(s).get(r))
                                       for r in roles},
            "as_requests_per_rep": [s.get("as_requests") for s in got],
            "samples": got,
        }
        entry.update(dict((extra_peer_info or {}).get(peer, {})))
        out["peers"][peer] = entry
    for key, (num, den) in headlines.items():
        out["ratios"][key] = {"numerator": num, "denominator": den,
                              "ratio": ratio(medians.get(num), medians.get(den))}
    out["ratios"][f"vs_{BASELINE}"] = {p: ratio(medians[p], medians.get(BASELINE)) for p in peers}
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_connrate_table(conn: Mapping) -> str:
    """Median conn/s per peer with latency, failures and CPU cost per connection."""
    peers = list(conn.get("peers", {}))
    header = ["peer", "conn/s (n)", "min..max", f"/{BASELINE}", "p50 ms", "p99 ms", "failed",
              "loadgen CPU", "tunnel CPU ms/conn (in+eg)", "AS calls/rep", "other CPU", "status"]
    rows = [header]
    vs = conn.get("ratios", {}).get(f"vs_{BASELINE}", {})
    for peer in peers:
        e = conn["peers"][peer]
        cpu = e["median_cpu_ms_per_conn"]
        tunnel = "-"
        if cpu.get("tunnel") is not None:
            tunnel = f"{cpu['tunnel']:.3f} ({cpu['ingress']:.3f}+{cpu['egress']:.3f})"
        as_calls = [a for a in e["as_requests_per_rep"] if a is not None]
        rows.append([
            peer, f"{_fmt(e['median_conn_per_s'], '.0f')} (n={e['n']})",
            f"{_fmt(e['min_conn_per_s'], '.0f')}..{_fmt(e['max_conn_per_s'], '.0f')}",
            _fmt_ratio(vs.get(peer)),
            _fmt(e["median_latency_ms"]["p50"], ".2f"), _fmt(e["median_latency_ms"]["p99"], ".2f"),
            str(e["failed_exchanges"]),
            _fmt(e["median_loadgen_cpu_pct"], ".0f") + ("%" if e["median_loadgen_cpu_pct"] is not None else ""),
            tunnel,
            ",".join(str(a) for a in as_calls) if as_calls and peer.endswith(":attest") else "-",
            _fmt(e["median_other_cpu_pct"], ".0f") + ("%" if e["median_other_cpu_pct"] is not None else ""),
            e["status"],
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    parts = []
    for key, r in conn.get("ratios", {}).items():
        if key.startswith("vs_"):
            continue
        parts.append(f"{key} {_fmt_ratio(r['ratio'])}")
    lines.append("connrate tng_nfq / upstream-tng: " + ", ".join(parts))
    for peer in peers:
        e = conn["peers"][peer]
        if e["errors"]:
            first = e["errors"][0].splitlines()[0]
            more = f" (+{len(e['errors']) - 1} more)" if len(e["errors"]) > 1 else ""
            lines.append(f"{peer} {e['status']}: {first}{more}")
    return "\n".join(lines)


def plot_connrate(results: Mapping, path: Path) -> None:
    """One bar per connrate peer: median conn/s with min-max whiskers, ratios and CPU/conn as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conn = results["connrate"]
    peers = list(conn["peers"])
    vs = conn["ratios"].get(f"vs_{BASELINE}", {})
    heads = {v["numerator"]: (k, v) for k, v in conn["ratios"].items() if not k.startswith("vs_")}
    colors = {"direct": "0.55", "upstream-tng": "C0", "tng_nfq": "C1"}
    fig, ax = plt.subplots(figsize=(11, 5.8))
    # direct loopback is an order of magnitude above any tunnel: scale to the tunnels, clip direct
    tunnel_max = max((conn["peers"][p]["max_conn_per_s"] or 0 for p in peers if p != BASELINE), default=0)
    ymax = tunnel_max * 1.45 if tunnel_max else None
    top = 0.0
    for i, peer in enumerate(peers):
        e = conn["peers"][peer]
        if peer == BASELINE and ymax and (e["max_conn_per_s"] or 0) > ymax:
            ax.bar(i, ymax, 0.7, color=colors["direct"], edgecolor="black", linewidth=0.5)
            ax.annotate(f"{e['median_conn_per_s']:.0f}\n(off scale,\n{e['min_conn_per_s']:.0f}.."
                        f"{e['max_conn_per_s']:.0f})", (i, ymax), xytext=(0, -12), textcoords="offset points",
                        ha="center", va="top", fontsize=8, color="white", fontweight="bold")
            continue
        if e["median_conn_per_s"] is None:
            ax.text(i, 0, f"{e['status']}\n(see results.json)", ha="center", va="bottom",
                    color="firebrick", fontsize=9)
            continue
        med, lo, hi = e["median_conn_per_s"], e["min_conn_per_s"], e["max_conn_per_s"]
        base = peer.split(":")[0]
        hatch = "//" if peer.endswith(":no_ra") else None
        ax.bar(i, med, 0.7, yerr=[[med - lo], [hi - med]], capsize=4, color=colors.get(base, "C2"),
               hatch=hatch, edgecolor="black", linewidth=0.5)
        label = f"{med:.0f}"
        r = vs.get(peer)
        if peer != BASELINE and r is not None:
            label += f"\n{r:.2f}x {BASELINE}"
        if peer in heads and heads[peer][1]["ratio"] is not None:
            label += f"\n{heads[peer][1]['ratio']:.2f}x upstream"
        cpu = e["median_cpu_ms_per_conn"].get("tunnel")
        if cpu is not None:
            label += f"\n{cpu:.2f} ms CPU/conn"
        ax.annotate(label, (i, hi), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
        top = max(top, hi)
    ax.set_xticks(range(len(peers)), [p.replace(":", "\n") for p in peers])
    ax.set_xlim(-0.6, len(peers) - 0.4)
    ax.set_ylabel("median new connections per second")
    ax.set_ylim(0, ymax or max(top * 1.35, 1.0))
    m, p = results.get("machine", {}), conn.get("params", {})
    ax.set_title(f"connection rate (connect, {p.get('request_bytes', 100)} B request, "
                 f"{p.get('request_bytes', 100)} B reply, close) in a private netns - "
                 f"{m.get('nproc', '?')} CPUs; {p.get('concurrency', '?')} workers, "
                 f"{p.get('reps', '?')} reps x {p.get('duration', '?')} s, whiskers = min..max", fontsize=9.5)
    parts = [f"{k} {_fmt_ratio(v['ratio'])}" for k, v in conn["ratios"].items() if not k.startswith("vs_")]
    ax.text(0.99, 0.98, "tng_nfq / upstream-tng: " + ", ".join(parts), transform=ax.transAxes,
            ha="right", va="top", fontsize=10, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
