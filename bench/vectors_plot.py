#!/usr/bin/env python3
"""Recall@10 against queries/s (log scale) from bench/results/vectors-*.json,
as a dependency-free SVG: bench/vectors.svg."""
import glob
import json
import math

W, H, L, B, R, T = 640, 420, 70, 50, 20, 30
runs = [json.load(open(p)) for p in sorted(glob.glob("bench/results/vectors-*.json"))]
series = []
for r in runs:
    series.append((f"THEMIS HTTP, {r['server_threads']} core(s)", r["themis"]))
if runs:
    series.append(("hnswlib in-process, 1 thread", runs[0]["hnswlib"]))
pts = [p for _, s in series for p in s]
qmin = min(p["qps"] for p in pts) / 1.3
qmax = max(p["qps"] for p in pts) * 1.3
rmin = max(0.0, min(p["recall"] for p in pts) - 0.02)
x = lambda q: L + (math.log10(q) - math.log10(qmin)) / (math.log10(qmax) - math.log10(qmin)) * (W - L - R)
y = lambda r: T + (1.0 - (r - rmin) / (1.0 - rmin)) * (H - T - B)
colors = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle">Fashion-MNIST 60k x 784, L2: recall@10 vs queries/s (log)</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
for e in range(int(math.floor(math.log10(qmin))), int(math.ceil(math.log10(qmax))) + 1):
    for m in (1, 2, 5):
        q = m * 10 ** e
        if qmin <= q <= qmax:
            out.append(f'<line x1="{x(q):.1f}" y1="{H-B}" x2="{x(q):.1f}" y2="{H-B+4}" stroke="black"/><text x="{x(q):.1f}" y="{H-B+16}" text-anchor="middle">{q}</text>')
steps = 5
for i in range(steps + 1):
    r = rmin + (1 - rmin) * i / steps
    out.append(f'<line x1="{L-4}" y1="{y(r):.1f}" x2="{W-R}" y2="{y(r):.1f}" stroke="#ddd"/><text x="{L-6}" y="{y(r)+4:.1f}" text-anchor="end">{r:.3f}</text>')
out.append(f'<text x="{(W+L)/2}" y="{H-12}" text-anchor="middle">queries/s</text>')
out.append(f'<text transform="translate(16,{(H-B+T)/2}) rotate(-90)" text-anchor="middle">recall@10</text>')
for i, (name, s) in enumerate(series):
    c = colors[i % len(colors)]
    path = " ".join(f"{x(p['qps']):.1f},{y(p['recall']):.1f}" for p in s)
    out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
    for p in s:
        out.append(f'<circle cx="{x(p["qps"]):.1f}" cy="{y(p["recall"]):.1f}" r="3" fill="{c}"><title>ef={p["ef"]}</title></circle>')
    out.append(f'<rect x="{L+10}" y="{T+8+i*16}" width="10" height="10" fill="{c}"/><text x="{L+26}" y="{T+17+i*16}">{name}</text>')
out.append("</svg>")
open("bench/vectors.svg", "w").write("\n".join(out))
print("wrote bench/vectors.svg")
