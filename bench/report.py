#!/usr/bin/env python3
"""Turns the load generator's JSON files from bench/run.sh into
bench/RESULTS.md, a machine-readable summary and an SVG latency plot.
Standard library only."""
import argparse, json, os, datetime, platform

p = argparse.ArgumentParser()
for a in ["work", "out", "md", "svg", "model", "client-cpus", "scaling", "sweep"]:
    p.add_argument("--" + a, default="")
for a in ["cpus", "server-cpus", "conns"]:
    p.add_argument("--" + a, type=int, default=0)
p.add_argument("--duration", type=float, default=0)
a = p.parse_args()


def load(name):
    path = os.path.join(a.work, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


def tput(r):
    return r["total"]["throughput_rps"] if r else 0.0


def lat(r, op, key):
    return r["ops"][op]["latency"][key] if r and op in r["ops"] else float("nan")


runs = {n: load(n) for n in ["http_get", "kv_get", "themis_get", "themis_put", "kv_put", "open_get_half", "open_put_half",
                              "http_get_p16", "kv_get_p16", "themis_get_p16", "themis_put_p16", "kv_put_p16"]}
wrk = None
wrk_path = os.path.join(a.work, "wrk.txt")
if os.path.exists(wrk_path):
    for line in open(wrk_path):
        if line.startswith("Requests/sec:"):
            wrk = float(line.split()[1])
scaling = {int(s): load("scale_" + s) for s in a.scaling.split()}
sweep = {int(s): load("sweep_" + s) for s in a.sweep.split()}

summary = {
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
    "machine": {"cpus": a.cpus, "model": a.model, "kernel": platform.release()},
    "server_cpus": a.server_cpus, "client_cpus": a.client_cpus, "connections": a.conns, "duration_s": a.duration,
    "get": {k: tput(runs[k]) for k in ["http_get", "kv_get", "themis_get", "http_get_p16", "kv_get_p16", "themis_get_p16"]},
    "put": {k: tput(runs[k]) for k in ["kv_put", "themis_put", "kv_put_p16", "themis_put_p16"]},
    "wrk_get_one_key": wrk,
    "ratios": {},
    "open_loop_half": {
        "get": {"rate": runs["open_get_half"]["workload"]["rate"] if runs["open_get_half"] else 0,
                "p50_ms": lat(runs["open_get_half"], "GET", "p50_ms"), "p99_ms": lat(runs["open_get_half"], "GET", "p99_ms"),
                "p99.9_ms": lat(runs["open_get_half"], "GET", "p99.9_ms")},
        "put": {"rate": runs["open_put_half"]["workload"]["rate"] if runs["open_put_half"] else 0,
                "p50_ms": lat(runs["open_put_half"], "PUT", "p50_ms"), "p99_ms": lat(runs["open_put_half"], "PUT", "p99_ms"),
                "p99.9_ms": lat(runs["open_put_half"], "PUT", "p99.9_ms")},
    },
    "scaling": {str(k): tput(v) for k, v in sorted(scaling.items())},
    "sweep": {str(k): {"offered": v["workload"]["rate"], "achieved": tput(v),
                       "p50_ms": lat(v, "GET", "p50_ms"), "p99_ms": lat(v, "GET", "p99_ms"),
                       "p99.9_ms": lat(v, "GET", "p99.9_ms")} for k, v in sorted(sweep.items()) if v},
}
g = summary["get"]
if g["http_get"]:
    summary["ratios"]["themis_get_vs_http_ceiling"] = g["themis_get"] / g["http_get"]
if g["kv_get"]:
    summary["ratios"]["themis_get_vs_kv_ceiling"] = g["themis_get"] / g["kv_get"]
if g["kv_get_p16"]:
    summary["ratios"]["themis_get_p16_vs_kv_ceiling_p16"] = g["themis_get_p16"] / g["kv_get_p16"]
if g["http_get_p16"]:
    summary["ratios"]["themis_get_p16_vs_http_ceiling_p16"] = g["themis_get_p16"] / g["http_get_p16"]
if summary["put"]["kv_put"]:
    summary["ratios"]["themis_put_vs_kv_put"] = summary["put"]["themis_put"] / summary["put"]["kv_put"]
one = summary["scaling"].get("1")
if one:
    summary["ratios"]["scaling_efficiency"] = {k: v / (int(k) * one) for k, v in summary["scaling"].items()}
json.dump(summary, open(a.out, "w"), indent=2)

# SVG: latency percentiles against offered load (log latency axis).
def write_svg(sweep, path):
    import math
    pts = [(v["offered"], v["p50_ms"], v["p99_ms"], v["p99.9_ms"]) for v in sweep.values()]
    W, H, L, B = 640, 400, 70, 50
    xmax = max(x for x, *_ in pts) * 1.05
    lo = math.floor(math.log10(max(min(min(p[1:]) for p in pts), 1e-3)))
    hi = math.ceil(math.log10(max(max(p[1:]) for p in pts)))
    hi = max(hi, lo + 1)
    sx = lambda x: L + (W - L - 20) * x / xmax
    sy = lambda y: H - B - (H - B - 20) * (math.log10(max(y, 10 ** lo)) - lo) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
           f'<text x="{W/2}" y="{H-12}" text-anchor="middle">offered load (GET req/s, open loop)</text>',
           f'<text x="16" y="{H/2}" transform="rotate(-90 16 {H/2})" text-anchor="middle">latency (ms, log scale)</text>']
    for e in range(lo, hi + 1):
        yv = 10 ** e
        out.append(f'<line x1="{L}" y1="{sy(yv):.1f}" x2="{W-20}" y2="{sy(yv):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L-6}" y="{sy(yv)+4:.1f}" text-anchor="end">{yv:g}</text>')
    for i in range(5):
        xv = xmax * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{H-B+16}" text-anchor="middle">{xv/1000:.0f}k</text>')
    for idx, (name, color) in enumerate([("p50", "#1f77b4"), ("p99", "#d62728"), ("p99.9", "#9467bd")]):
        coords = " ".join(f"{sx(p[0]):.1f},{sy(p[idx+1]):.1f}" for p in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        for pt in pts:
            out.append(f'<circle cx="{sx(pt[0]):.1f}" cy="{sy(pt[idx+1]):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{L+10}" y="{30+idx*16}" fill="{color}">{name}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


if summary["sweep"] and a.svg:
    write_svg(summary["sweep"], a.svg)

# RESULTS.md
f = lambda x: f"{x:,.0f}"
md = [
    "# Benchmark results",
    "",
    f"Generated by `bench/run.sh` on {summary['date']}: {a.cpus} CPUs ({a.model}), kernel {platform.release()}.",
    f"Server pinned to CPUs 0..{a.server_cpus-1}, load generator (`themis-loadtest`) to CPUs {a.client_cpus};",
    f"{a.conns} keep-alive connections, {a.duration:g} s measured after 2 s warm-up, 1 KiB JSON entities, 100,000 keys.",
    "",
    f"## GET /entities, closed loop, {a.server_cpus} server core(s)",
    "",
    "| server | req/s | p50 ms | p99 ms | vs network ceiling | vs KV ceiling |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
]
for k, label, base in [("http_get", "baseline http (fixed 1 KiB body)", ""), ("kv_get", "baseline kv (RocksDB point read)", ""),
                       ("themis_get", "themis_server", ""),
                       ("http_get_p16", "baseline http, pipeline 16", "_p16"), ("kv_get_p16", "baseline kv, pipeline 16", "_p16"),
                       ("themis_get_p16", "themis_server, pipeline 16", "_p16")]:
    r = runs[k]
    if not r:
        continue
    vs_h = tput(r) / g["http_get" + base] if g["http_get" + base] else float("nan")
    vs_k = tput(r) / g["kv_get" + base] if g["kv_get" + base] else float("nan")
    md.append(f"| {label} | {f(tput(r))} | {lat(r,'GET','p50_ms'):.3f} | {lat(r,'GET','p99_ms'):.3f} | {vs_h:.2f} | {vs_k:.2f} |")
md += ["", "## PUT /entities, closed loop", "", "| server | req/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
for k, label in [("kv_put", "baseline kv (RocksDB put)"), ("themis_put", "themis_server"),
                 ("kv_put_p16", "baseline kv, pipeline 16"), ("themis_put_p16", "themis_server, pipeline 16")]:
    r = runs[k]
    if r:
        md.append(f"| {label} | {f(tput(r))} | {lat(r,'PUT','p50_ms'):.3f} | {lat(r,'PUT','p99_ms'):.3f} |")
if wrk:
    md += ["", f"Cross-check: `wrk -c {a.conns}` GET of one key against themis_server: {f(wrk)} req/s."]
o = summary["open_loop_half"]
md += ["", "## Open loop at half the measured maximum (coordinated omission corrected)", "",
       "| op | offered req/s | p50 ms | p99 ms | p99.9 ms |", "| --- | ---: | ---: | ---: | ---: |",
       f"| GET | {f(o['get']['rate'])} | {o['get']['p50_ms']:.3f} | {o['get']['p99_ms']:.3f} | {o['get']['p99.9_ms']:.3f} |",
       f"| PUT | {f(o['put']['rate'])} | {o['put']['p50_ms']:.3f} | {o['put']['p99_ms']:.3f} | {o['put']['p99.9_ms']:.3f} |"]
if summary["sweep"]:
    md += ["", "## Latency against offered load (GET, open loop)", "", "![latency percentiles against offered load](latency.svg)", "",
           "| offered req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms |", "| ---: | ---: | ---: | ---: | ---: |"]
    for v in summary["sweep"].values():
        md.append(f"| {f(v['offered'])} | {f(v['achieved'])} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['p99.9_ms']:.3f} |")
md += ["", "## Scaling: GET throughput by server cores", "", "| cores | req/s | vs N × 1-core |", "| ---: | ---: | ---: |"]
for k, v in summary["scaling"].items():
    eff = v / (int(k) * one) if one else float("nan")
    md.append(f"| {k} | {f(v)} | {eff:.2f} |")
notes = os.path.join(os.path.dirname(os.path.abspath(a.md)), "NOTES.md")
if os.path.exists(notes):
    md += ["", open(notes).read().rstrip()]
md += ["", "Machine-readable: `bench/results/latest.json`. Reproduce: `bench/run.sh` (or `make bench`).", ""]
open(a.md, "w").write("\n".join(md))
