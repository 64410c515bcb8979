"""The benchmark's outside tools: wrk, nginx, pgbench (Debian packages), installed on demand.

Standard library only. `ensure()` installs whatever is missing with apt-get (refreshing the
package lists once if the first attempt fails) and stops with a clear message when that is not
possible (no apt-get, not root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# executable -> Debian package
NEEDED = {"wrk": "wrk", "nginx": "nginx", "pgbench": "postgresql-client", "taskset": "util-linux"}


def missing() -> list[str]:
    found = {name for name in NEEDED if shutil.which(name)}
    # nginx lives in /usr/sbin, which a non-login PATH may lack
    if "nginx" not in found and os.path.exists("/usr/sbin/nginx"):
        os.environ["PATH"] += os.pathsep + "/usr/sbin"
        found.add("nginx")
    return [name for name in NEEDED if name not in found]


def ensure() -> None:
    absent = missing()
    if not absent:
        return
    packages = sorted({NEEDED[name] for name in absent})
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        sys.exit(
            f"bench needs {', '.join(absent)}: install the Debian packages "
            f"{' '.join(packages)} (apt-get install -y {' '.join(packages)}) and run it again"
        )
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run([apt, "update"], env=env, check=False)
        if subprocess.run(install, env=env).returncode != 0:
            sys.exit(f"apt-get could not install {' '.join(packages)}; install them and retry")
    still = missing()
    if still:
        sys.exit(f"still missing after apt-get: {', '.join(still)}")
