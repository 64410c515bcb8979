"""What one password verify costs with the pages' argon2id parameters, beside the neighbours
that were considered (not a test).

    .venv/bin/python -m bench.micro.argon2_cost [--n 20]

Prints ms per verify (best of 3 runs of `n`) for each parameter set, and the CPU-seconds ratio to
the one panelsrv uses (store/accounts.py HASHER). The target: at most ~50 ms per verify on a
2-core machine, so a sign-in stays quick while a stolen hash costs an attacker 19 MiB and tens
of milliseconds per guess. Last run on this machine: bench/README.md (Passwords).
"""

from __future__ import annotations

import argparse
import time

import argon2

from panelsrv.store.accounts import HASHER

CANDIDATES = {
    "panelsrv: 19 MiB, t=2 (OWASP's first choice)": HASHER,
    "12 MiB, t=3 (OWASP's alternative)": argon2.PasswordHasher(
        time_cost=3, memory_cost=12288, parallelism=1, type=argon2.Type.ID
    ),
    "32 MiB, t=2": argon2.PasswordHasher(
        time_cost=2, memory_cost=32768, parallelism=1, type=argon2.Type.ID
    ),
    "64 MiB, t=3 (argon2-cffi's default)": argon2.PasswordHasher(),
}
PASSWORD = "a long enough passphrase"


def cpu_ms(hasher: argon2.PasswordHasher, n: int) -> float:
    stored = hasher.hash(PASSWORD)
    runs = []
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            hasher.verify(stored, PASSWORD)
        runs.append((time.process_time() - started) / n * 1e3)
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    figures = {name: cpu_ms(hasher, args.n) for name, hasher in CANDIDATES.items()}
    ours = figures[next(iter(CANDIDATES))]
    for name, ms in figures.items():
        print(f"{ms:8.1f} ms CPU per verify  x{ms / ours:4.2f}  {name}")


if __name__ == "__main__":
    main()
