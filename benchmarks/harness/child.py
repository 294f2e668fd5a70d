"""The children a benchmark starts from this package, each in its own process on its own core:

    python -m harness.child baseline SPEC_FILE PORT_FILE   # the bare aiohttp app
    python -m harness.child burst SPEC_FILE OUT_FILE       # the renewal's client swarm

(`harness.processes.child_argv` builds the command, `child_env` puts the benchmarks on the path.)
"""

from __future__ import annotations

import sys

from harness.baseline import serve_baseline
from harness.swarm import burst_main

ROLES = {"baseline": serve_baseline, "burst": burst_main}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ROLES:
        usage = f"usage: python -m harness.child {{{'|'.join(ROLES)}}} SPEC_FILE OUT_FILE"
        print(usage, file=sys.stderr)
        return 2
    ROLES[argv[0]](argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
