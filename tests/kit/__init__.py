"""The kit every test suite shares, one module per kind of help:

- `waiting`: the one bounded poll (`until`, and `until_sync` for tests without a loop);
- `wire`: the one request builder (`request`, `post`, `encode`) and one-request exchange;
- `redis`: dropping what a test's guard wrote (`drop_prefix`);
- `stack`: starting what tests serve against as subprocesses (`Served`, `served`, `spawn`).

A suite's own kit (tests/http/httpkit.py, tests/e2e/kit.py, tests/limits/limitkit.py, ...)
builds on these and holds only what that suite alone needs.
"""
