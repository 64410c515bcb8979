"""Limits and abuse protection: per-IP buckets, invalid-key blocks, per-user caps.

`Guard` (guard/limits.py) is the whole interface the HTTP and API layers use; backends for
several processes are in guard/shared.py (Redis) and guard/hub.py (one host's workers).
"""

from panelsrv.guard.limits import Guard, GuardSettings, retry_after

__all__ = ["Guard", "GuardSettings", "retry_after"]
