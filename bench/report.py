"""Results: latest.json, results.md (tables, targets) and the PNG charts.

Imports matplotlib lazily (only `charts`); the table and target functions are pure, so they are
unit-tested (tests/test_bench_report.py). Ratios are panelsrv's req/s over the other system's,
measured in the same run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SYSTEM_ORDER = ["panelsrv", "nginx", "minimal", "minimal_db", "fastapi",
                "pgbench"]
SYSTEM_LABEL = {
    "panelsrv": "panelsrv",
    "nginx": "nginx (fixed body)",
    "minimal": "uvloop+httptools (fixed body)",
    "minimal_db": "uvloop+httptools + 1 asyncpg lookup",
    "fastapi": "FastAPI + uvicorn + asyncpg",
    "pgbench": "pgbench (place_order)",
}


class RunLike(Protocol):
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int
    requests: int
    seconds: float
    cpu: dict[str, float]

    def summary(self) -> dict[str, float | int]: ...

    def detail(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Target:
    scenario: str
    baseline: str  # a system name, or "p50" for the p99/p50 check
    minimum: float  # panelsrv / baseline must be >= this (p99/p50 must be <= it)

    @property
    def text(self) -> str:
        if self.baseline == "p50":
            return f"{self.scenario}: p99 ≤ {self.minimum:g} × p50"
        return f"{self.scenario} ≥ {self.minimum:g} × {SYSTEM_LABEL[self.baseline]}"


TARGETS = [
    Target("services", "minimal", 0.75),
    Target("services", "fastapi", 6),
    Target("balance", "minimal_db", 0.85),
    Target("balance", "fastapi", 3),
    Target("status", "minimal_db", 0.85),
    Target("status", "fastapi", 3),
    Target("status100", "minimal_db", 0.85),
    Target("status100", "fastapi", 3),
    Target("add", "pgbench", 0.6),
    Target("add", "fastapi", 2.5),
    Target("reject_key", "minimal", 0.9),
    Target("reject_unknown_key", "minimal", 0.9),
    Target("reject_ip", "minimal", 0.9),
    Target("mix", "p50", 3),
]


def busy(run: RunLike) -> float | None:
    """Share of one core the system under test used during the run (None: not measured)."""
    used = run.cpu.get("server")
    return None if used is None or not run.seconds else used / run.seconds


def per_core(run: RunLike) -> float | None:
    """Requests per CPU-second of the system under test: its req/s at one saturated core.
    The fair comparison when the load generator, not the server, limited the req/s."""
    used = run.cpu.get("server")
    return run.requests / used if used else None


def _systems(runs: Mapping[str, RunLike]) -> list[str]:
    return sorted(runs, key=lambda s: SYSTEM_ORDER.index(s) if s in SYSTEM_ORDER else 99)


def results_table(scenarios: Mapping[str, Mapping[str, RunLike]]) -> str:
    """One row per (scenario, system): req/s, p50, p99, panelsrv ÷ that system; then the
    server's CPU use, req per CPU-second and the same ratio on that basis."""
    lines = [
        "| scenario | system | req/s | p50 ms | p99 ms | panelsrv ÷ system | server CPU "
        "| req per CPU-s | panelsrv ÷ system per CPU-s | non-2xx | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, runs in scenarios.items():
        ours = runs.get("panelsrv")
        ours_core = per_core(ours) if ours is not None else None
        for system in _systems(runs):
            run = runs[system]
            mine = system == "panelsrv" or ours is None
            ratio = "—" if mine or not run.rps else f"{ours.rps / run.rps:.2f}"  # type: ignore[union-attr]
            core, share = per_core(run), busy(run)
            core_ratio = "—" if mine or not core or not ours_core else f"{ours_core / core:.2f}"
            lines.append(
                f"| {scenario} | {SYSTEM_LABEL.get(system, system)} | {run.rps:,.0f} | "
                f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {ratio} | "
                f"{'—' if share is None else f'{share:.0%}'} | "
                f"{'—' if core is None else f'{core:,.0f}'} | {core_ratio} | "
                f"{run.non2xx:,} | {run.errors:,} |"
            )
    return "\n".join(lines) + "\n"


def target_rows(scenarios: Mapping[str, Mapping[str, RunLike]]) -> list[dict[str, Any]]:
    """Each target on req/s (the issue's definition) and, where both sides' CPU was measured,
    on req per CPU-second (what the ratio would be if neither side were held back by the load
    generator)."""
    rows = []
    for t in TARGETS:
        runs = scenarios.get(t.scenario, {})
        ours = runs.get("panelsrv")
        if ours is None:
            continue
        row: dict[str, Any] = {"target": t.text, "per_cpu": None, "met_per_cpu": None}
        if t.baseline == "p50":
            value = ours.p99_ms / ours.p50_ms if ours.p50_ms else float("inf")
            row.update(measured=round(value, 2), met=value <= t.minimum)
        elif t.baseline in runs and runs[t.baseline].rps:
            base = runs[t.baseline]
            value = ours.rps / base.rps
            row.update(measured=round(value, 2), met=value >= t.minimum)
            mine, theirs = per_core(ours), per_core(base)
            if mine and theirs:
                row.update(per_cpu=round(mine / theirs, 2), met_per_cpu=mine / theirs >= t.minimum)
        else:
            continue
        rows.append(row)
    return rows


def _verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**missed**")


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | req/s ratio | | per CPU-s ratio | |", "|---|---:|---|---:|---|"]
    for row in rows:
        per = "—" if row["per_cpu"] is None else f"{row['per_cpu']:.2f}"
        lines.append(f"| {row['target']} | {row['measured']:.2f} | {_verdict(row['met'])} | "
                     f"{per} | {_verdict(row['met_per_cpu'])} |")
    return "\n".join(lines) + "\n"


def soak_summary(samples: list[dict[str, float]], run: RunLike, seconds: float
                 ) -> dict[str, Any]:
    """RSS per worker: first sample after warm-up, last, and the largest deviation from the
    first (the target is ±10%)."""
    workers = [k for k in samples[0] if k != "t"]
    per = {}
    for w in workers:
        first, values = samples[0][w], [s[w] for s in samples if w in s]
        per[w] = {"first_mb": first, "last_mb": values[-1], "max_mb": max(values),
                  "max_deviation_pct": round(max(abs(v - first) for v in values) / first * 100, 2)}
    return {"seconds": seconds, "scenario": "mix", "load": run.summary(),
            "requests": run.requests, "non2xx": run.non2xx, "workers": per,
            "samples": samples,
            "flat": all(p["max_deviation_pct"] <= 10 for p in per.values())}


def write(out: Path, scenarios: Mapping[str, Mapping[str, RunLike]], machine: dict[str, Any],
          extra: dict[str, Any], *, quick: bool) -> None:
    rows = target_rows(scenarios)
    doc: dict[str, Any] = {
        "scenarios": {name: {s: r.summary() for s, r in runs.items()}
                      for name, runs in scenarios.items()},
        "machine": machine,
        "mode": "quick" if quick else "full",
        "targets": rows,
        "details": {name: {s: r.detail() for s, r in runs.items()}
                    for name, runs in scenarios.items()},
        **extra,
    }
    previous = out / "latest.json"
    if previous.exists():
        soak = json.loads(previous.read_text()).get("soak")
        if soak is not None and "soak" not in doc:
            doc["soak"] = soak  # the soak is its own target; keep its last record
    previous.write_text(json.dumps(doc, indent=1) + "\n")
    md = [
        f"# panelsrv benchmark ({doc['mode']} run)\n",
        "Generated by `make bench` (bench/run.py); read bench/README.md for what each row "
        "means, what was pinned where, and the caveats.\n",
        "## Results\n", results_table(scenarios),
        "\n## Targets (ratios from this run)\n", targets_table(rows),
    ]
    if "soak" in doc:
        md += ["\n## Memory soak\n", soak_table(doc["soak"])]
    if "scaling" in doc:
        md += ["\n## Workers (unpinned)\n", scaling_table(doc["scaling"])]
    md += ["\n## Machine\n", "```\n" + json.dumps(machine, indent=1) + "\n```\n"]
    (out / "results.md").write_text("\n".join(md))
    charts(out, scenarios)


def soak_table(soak: dict[str, Any]) -> str:
    lines = [f"Mixed load for {soak['seconds']:g} s ({soak['load']['rps']:,.0f} req/s): RSS per "
             "process, MB.\n", "| process | first | last | max | max deviation |",
             "|---|---:|---:|---:|---:|"]
    for pid, w in soak["workers"].items():
        lines.append(f"| {pid} | {w['first_mb']:.1f} | {w['last_mb']:.1f} | {w['max_mb']:.1f} | "
                     f"{w['max_deviation_pct']:.1f}% |")
    return "\n".join(lines) + "\n"


def scaling_table(scaling: dict[str, dict[str, dict[str, Any]]]) -> str:
    counts = sorted({w for per in scaling.values() for w in per}, key=int)
    lines = ["| scenario | " + " | ".join(f"{w} worker(s) req/s" for w in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for scenario, per in scaling.items():
        lines.append(f"| {scenario} | " + " | ".join(
            f"{per[w]['rps']:,.0f}" if w in per else "—" for w in counts) + " |")
    return "\n".join(lines) + "\n"


def write_soak(out: Path, soak: dict[str, Any], machine: dict[str, Any]) -> None:
    path = out / "latest.json"
    doc = json.loads(path.read_text()) if path.exists() else {"scenarios": {}, "machine": machine}
    doc["soak"] = soak
    path.write_text(json.dumps(doc, indent=1) + "\n")
    (out / "soak.md").write_text("# Memory soak\n\n" + soak_table(soak))


def charts(out: Path, scenarios: Mapping[str, Mapping[str, RunLike]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scenarios)
    systems = [s for s in SYSTEM_ORDER if any(s in scenarios[n] for n in names)]
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        xs = [j + i * width for j, n in enumerate(names) if system in scenarios[n]]
        ys = [scenarios[n][system].rps for n in names if system in scenarios[n]]
        ax.bar(xs, ys, width, label=SYSTEM_LABEL[system])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=20)
    ax.set_ylabel("requests per second (log)")
    ax.set_yscale("log")
    ax.set_title("req/s per scenario and system (same run, same machine)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    add = scenarios.get("add", {})
    # The 1st..99th percentiles are a 1%-of-requests sample each: binned on shared log-spaced
    # edges, a bin's count is the share of requests (in %) whose latency fell in it.
    samples = {}
    for system in _systems(add):
        pct: dict[str, float] = add[system].detail()["percentiles_ms"]
        samples[system] = [pct[str(p)] for p in range(1, 100) if str(p) in pct]
    values = [v for vs in samples.values() for v in vs if v > 0]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if values:
        low, high = min(values), max(values) * 1.01
        edges = [low * (high / low) ** (i / 60) for i in range(61)]
        for system, vs in samples.items():
            run = add[system]
            ax.hist(vs, bins=edges, histtype="step", linewidth=1.5,
                    label=f"{SYSTEM_LABEL[system]} (p50 {run.p50_ms:.1f} ms, "
                          f"p99 {run.p99_ms:.1f} ms)")
        ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log; the slowest 1% are left out: see p99)")
    ax.set_ylabel("share of requests (%)")
    ax.set_title("add: latency distribution (same run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "add_latency.png", dpi=110)
    plt.close(fig)


def rerender(out: Path) -> None:
    """results.md and the charts again from latest.json (e.g. after changing this module)."""
    from bench.load import Run

    doc = json.loads((out / "latest.json").read_text())
    scenarios = {name: {system: Run(**detail) for system, detail in runs.items()}
                 for name, runs in doc["details"].items()}
    skip = {"scenarios", "machine", "mode", "targets", "details"}
    extra = {k: v for k, v in doc.items() if k not in skip}
    write(out, scenarios, doc["machine"], extra, quick=doc["mode"] == "quick")


if __name__ == "__main__":
    import sys

    rerender(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results"))
