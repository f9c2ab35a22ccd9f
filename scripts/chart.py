#!/usr/bin/env python3
"""Draws docs/bench/fanout.svg and prints a Markdown summary from the JSON that
scripts/bench.sh wrote. Standard library only.

    python3 scripts/chart.py docs/bench
"""

import glob
import json
import os
import sys

SERIES = [
    ("chatd", "chatd-fanout-{}", "#1f77b4"),
    ("grpc-node", "grpcnode-fanout-{}", "#2ca02c"),
    ("Socket.IO seed", "socketio-fanout-{}", "#d62728"),
]
SUBS = [100, 250, 500, 1000]


def load(directory, name):
    path = os.path.join(directory, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    return json.loads(text) if text else None


def fanout_point(run):
    """(deliveries/s, p99 ms) from a chatd-bench report or a bench.js line."""
    if run is None:
        return None
    if "figures" in run:
        figures = dict(run["figures"])
        return figures["deliveries/s"], run["latency"]["p99_ms"]
    return run["deliveries_per_s"], run["p99_ms"]


def panel(x0, y0, w, h, title, ylabel, series, log_y):
    """One line chart as SVG elements; series: [(label, color, [(x, y)])]."""
    import math

    out = []
    ys = [y for _, _, pts in series for _, y in pts if y and y > 0]
    if not ys:
        return out
    lo, hi = min(ys), max(ys)
    if log_y:
        lo = 10 ** math.floor(math.log10(lo))
        hi = 10 ** math.ceil(math.log10(hi))
        ticks = [10**e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1)]

        def sy(v):
            return y0 + h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * h
    else:
        lo, hi = 0, hi * 1.1
        ticks = [hi * i / 5 for i in range(6)]

        def sy(v):
            return y0 + h - (v - lo) / (hi - lo) * h

    xs = SUBS

    def sx(v):
        return x0 + (xs.index(v)) / (len(xs) - 1) * w

    out.append(f'<text x="{x0 + w / 2}" y="{y0 - 12}" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>')
    out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#333"/>')
    for t in ticks:
        y = sy(t)
        label = f"{t / 1e6:.0f}M" if t >= 1e6 else f"{t / 1000:.0f}k" if t >= 1000 else f"{t:.0f}"
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{label}</text>')
    for v in xs:
        out.append(f'<text x="{sx(v):.1f}" y="{y0 + h + 16}" text-anchor="middle" font-size="11">{v}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle" font-size="12">subscribers in one room</text>')
    out.append(
        f'<text x="{x0 - 48}" y="{y0 + h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 {x0 - 48} {y0 + h / 2})">{ylabel}</text>'
    )
    for label, color, pts in series:
        pts = [(x, y) for x, y in pts if y and y > 0]
        if not pts:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
    return out


def chart(directory):
    rate_series, p99_series = [], []
    for label, pattern, color in SERIES:
        points = [(s, fanout_point(load(directory, pattern.format(s)))) for s in SUBS]
        rate_series.append((label, color, [(s, p[0]) for s, p in points if p]))
        p99_series.append((label, color, [(s, p[1]) for s, p in points if p]))
    width, height = 900, 400
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    parts += panel(90, 50, 320, 260, "Deliveries per second (log)", "deliveries/s", rate_series, True)
    parts += panel(540, 50, 320, 260, "p99 delivery latency (log)", "ms", p99_series, True)
    for i, (label, _, color) in enumerate(SERIES):
        x = 150 + i * 220
        parts.append(f'<rect x="{x}" y="{height - 28}" width="14" height="14" fill="{color}"/>')
        parts.append(f'<text x="{x + 20}" y="{height - 16}" font-size="12">{label}</text>')
    parts.append("</svg>")
    path = os.path.join(directory, "fanout.svg")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
    return path


def summary(directory):
    print("| run | figures | latency p50 / p99 / p99.9 / max (ms) | server CPU s | checks |")
    print("| --- | --- | --- | --- | --- |")
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.basename(path)[:-5]
        with open(path) as f:
            text = f.read().strip()
        if not text:
            continue
        run = json.loads(text)
        if "figures" not in run:
            print(
                f"| {name} | {run['deliveries_per_s']:,} deliveries/s, {run['delivered']:,} of "
                f"{run['expected']:,} delivered"
                + (f", {run['server_cpu_us_per_delivery']} µs server CPU/delivery" if "server_cpu_us_per_delivery" in run else "")
                + f" | {run['p50_ms']} / {run['p99_ms']} / - / - | {run.get('server_cpu_seconds', '-')} | "
                f"{'timed out' if run['timedOut'] else 'ok'} |"
            )
            continue
        figures = ", ".join(
            f"{k} -" if v is None else f"{k} {v:,.0f}" if abs(v) >= 100 else f"{k} {v:.3g}"
            for k, v in run["figures"]
        )
        lat = run.get("latency")
        lat = f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} / {lat['p999_ms']:.2f} / {lat['max_ms']:.2f}" if lat else "-"
        cpu = run.get("server")
        cpu = f"{cpu['cpu_seconds']:.2f}" if cpu else "-"
        checks = ", ".join(f"{k}: {'ok' if ok else 'FAILED'}" for k, ok in run["checks"]) or "-"
        print(f"| {name} | {figures} | {lat} | {cpu} | {checks} |")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "docs/bench"
    print(f"wrote {chart(directory)}", file=sys.stderr)
    summary(directory)
