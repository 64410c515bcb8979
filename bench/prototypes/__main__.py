"""Run the panelsrv CLI with a prototype applied: `python -m bench.prototypes NAME serve ...`.

Imports bench.prototypes.NAME (which monkeypatches panelsrv on import) and panelsrv.cli. The
prototypes are measurements of proposed server changes, never used in production.
"""

from __future__ import annotations

import importlib
import sys

if __name__ == "__main__":
    name = sys.argv.pop(1)
    importlib.import_module(f"bench.prototypes.{name}")
    from panelsrv.cli import main

    main(sys.argv[1:])
