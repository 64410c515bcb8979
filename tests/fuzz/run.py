"""`make fuzz`: each target of `tests/fuzz/targets.py` under atheris (coverage-guided libFuzzer,
panelsrv instrumented), one subprocess per target, `--jobs` at a time; per-target figures
printed and written to `--out` with the command that reproduces them.

    python -m tests.fuzz.run [--runs N] [--seconds S] [--jobs J] [--out PATH] [target ...]

A target stops at `--runs` inputs or `--seconds` (whichever comes first), or at its first crash
or hang (an input slower than `--timeout` seconds); the run fails unless every target has none.
Each starts from its seed corpus (`tests/fuzz/corpus/<target>/`, never written to) and grows a
working corpus of its own in `var/fuzz/<target>/corpus/`; a crashing input is left in
`var/fuzz/<target>/` (`crash-*`, `timeout-*`, `oom-*`), to replay with
`python -m tests.fuzz.run --replay FILE --target NAME`. Needs the `fuzz` extra (atheris).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMES = ("reader", "decode", "sign", "money", "answers")
MAX_LEN = 4096  # bytes per input: every target's surface is reached well within it
_STAT = re.compile(rb"^stat::(\w+):\s*(\d+)", re.M)
_COVERAGE = re.compile(rb"\bcov: (\d+) ft: (\d+)")


def child(name: str, libfuzzer_args: list[str]) -> None:
    """In the subprocess: instrument panelsrv, then fuzz one target until libFuzzer stops."""
    import atheris

    with atheris.instrument_imports(include=["panelsrv"]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[name]
    atheris.Setup([sys.argv[0], *libfuzzer_args], target)
    atheris.Fuzz()


def fuzz(name: str, runs: int, seconds: int, timeout: int, work: Path) -> dict[str, Any]:
    """One target in a subprocess -> its figures."""
    out = work / name
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*-*"):  # a previous run's findings: this run's count its own
        if old.is_file():
            old.unlink()
    args = [
        f"-runs={runs}",
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-max_len={MAX_LEN}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={out}/",
        str(corpus),
        str(HERE / "corpus" / name),
    ]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", "--child", name, "--", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    (out / "log.txt").write_bytes(proc.stderr)
    stats = {k.decode(): int(v) for k, v in _STAT.findall(proc.stderr)}
    coverage = _COVERAGE.findall(proc.stderr)
    findings = sorted(p.name for p in out.glob("*-*") if p.is_file())
    crashes = [f for f in findings if not f.startswith("timeout-")]
    hangs = [f for f in findings if f.startswith("timeout-")]
    if proc.returncode and not findings:
        crashes.append(f"exit status {proc.returncode}, see {out / 'log.txt'}")
    inputs = stats.get("number_of_executed_units", 0)
    return {
        "inputs": inputs,
        "crashes": len(crashes),
        "hangs": len(hangs),
        "seconds": round(elapsed, 1),
        "exec_per_s": round(inputs / elapsed) if elapsed else 0,
        "corpus": sum(1 for _ in corpus.iterdir()),
        "coverage": int(coverage[-1][0]) if coverage else None,
        "slowest_input_s": stats.get("slowest_unit_time_sec"),
        "peak_rss_mb": stats.get("peak_rss_mb"),
        "findings": [str(out / f) for f in crashes + hangs],
    }


def runs_per_target(given: list[str]) -> dict[str, int]:
    """`--runs` values -> inputs by target name, "" for every target not named."""
    runs = {"": 2_000_000}
    for value in given:
        name, _, count = value.rpartition("=")
        runs[name] = int(count.replace(",", "").replace("_", ""))
    return runs


def replay(name: str, path: Path) -> None:
    from tests.fuzz.targets import TARGETS

    TARGETS[name](path.read_bytes())
    print(f"{name}: {path} passes")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("targets", nargs="*", help=f"of {' '.join(NAMES)} (all)")
    parser.add_argument(
        "--runs", action="append", default=[], metavar="[TARGET=]N",
        help="inputs per target (2,000,000), or for one target (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=int, default=3600, help="time per target")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=int, default=10, help="seconds: slower is a hang")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "fuzz")
    parser.add_argument("--replay", type=Path, help="run one input (with --target)")
    parser.add_argument("--target", choices=NAMES)
    opts = parser.parse_args(argv)
    if opts.replay:
        replay(opts.target or parser.error("--replay needs --target"), opts.replay)
        return 0
    names = opts.targets or list(NAMES)
    runs = runs_per_target(opts.runs)
    if unknown := (set(names) | set(runs)) - set(NAMES) - {""}:
        parser.error(f"no target {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with ThreadPoolExecutor(opts.jobs) as pool:
        args = (opts.seconds, opts.timeout, opts.work)
        jobs = {n: pool.submit(fuzz, n, runs.get(n, runs[""]), *args) for n in names}
        figures = {n: job.result() for n, job in jobs.items()}
    wall = time.monotonic() - started
    print(f"{'target':<8} {'inputs':>11} {'crashes':>7} {'hangs':>5} {'seconds':>8} {'exec/s':>7}")
    for n, f in figures.items():
        print(
            f"{n:<8} {f['inputs']:>11,} {f['crashes']:>7} {f['hangs']:>5} "
            f"{f['seconds']:>8} {f['exec_per_s']:>7,}"
        )
        for finding in f["findings"]:
            print(f"  {finding}")
    total = sum(f["inputs"] for f in figures.values())
    failed = sum(f["crashes"] + f["hangs"] for f in figures.values())
    print(f"total    {total:>11,} inputs, {failed} crashes or hangs, {wall:.0f} s wall")
    command = ["python", "-m", "tests.fuzz.run", *argv] if argv else ["make", "fuzz"]
    report = {
        "command": shlex.join(command),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "jobs": opts.jobs,
        "runs_per_target": {n: runs.get(n, runs[""]) for n in names},
        "seconds_per_target": opts.seconds,
        "wall_seconds": round(wall, 1),
        "total_inputs": total,
        "crashes_and_hangs": failed,
        "targets": figures,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
