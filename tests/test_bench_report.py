"""bench/report.py: the results table and the target verdicts (pure formatting, no load)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import report


@dataclass
class FakeRun:
    rps: float
    p50_ms: float = 1.0
    p99_ms: float = 2.0
    non2xx: int = 0
    errors: int = 0
    requests: int = 1000
    seconds: float = 1.0
    cpu: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int]:
        return {"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}

    def detail(self) -> dict[str, object]:
        return {"percentiles_ms": {}}


def test_table_has_one_row_per_system_with_ratio_to_panelsrv() -> None:
    scenarios = {
        "services": {
            "fastapi": FakeRun(1000, cpu={"server": 1.0}),
            "panelsrv": FakeRun(8000, requests=8000, cpu={"server": 1.0}),
            "minimal": FakeRun(10000, requests=10000, cpu={"server": 0.5}),
        }
    }
    rows = report.results_table(scenarios).splitlines()
    assert len(rows) == 2 + 3
    # panelsrv first, then the baselines in their fixed order
    assert rows[2].startswith("| services | panelsrv | 8,000 |")
    assert "| uvloop+httptools (fixed body) | 10,000 |" in rows[3]
    minimal = [c.strip() for c in rows[3].split("|")]
    assert minimal[6] == "0.80"  # 8000 / 10000 req/s
    assert minimal[7] == "50%"  # the baseline's server used half a core
    assert minimal[9] == "0.40"  # 8000 per CPU-s against 20000 per CPU-s
    assert [c.strip() for c in rows[4].split("|")][6] == "8.00"


def test_targets_report_both_bases_and_the_latency_check() -> None:
    scenarios = {
        "services": {
            "panelsrv": FakeRun(8000, requests=8000, cpu={"server": 1.0}),
            "minimal": FakeRun(10000, requests=10000, cpu={"server": 0.5}),
        },
        "mix": {"panelsrv": FakeRun(3000, p50_ms=10.0, p99_ms=35.0)},
    }
    rows = {r["target"]: r for r in report.target_rows(scenarios)}
    services = rows["services ≥ 0.75 × uvloop+httptools (fixed body)"]
    assert (services["measured"], services["met"]) == (0.8, True)
    assert (services["per_cpu"], services["met_per_cpu"]) == (0.4, False)
    mix = rows["mix: p99 ≤ 3 × p50"]
    assert (mix["measured"], mix["met"]) == (3.5, False)
    # targets whose systems did not run are left out, not failed
    assert not any(r.startswith("add") for r in rows)
    table = report.targets_table(list(rows.values()))
    assert "| 0.80 | met | 0.40 | **missed** |" in table
