"""What the endpoint benchmarks share (benchmarks/README.md): real processes, wrk, a bare aiohttp
baseline, a swarm of keep-alive clients across one renewal, time to ready, RSS and the table.

`aws_endpoints.py`, `gcp_endpoints.py` and `azure_endpoints.py` import this package; it also
starts children of its own (`harness.child`: the bare app, the client swarm), so the load and
the swarm run in their own process on their own core. Nothing here asserts on timing: figures
are printed, verdicts are information.

Modules by job: `processes` (children, waiting, HTTP and /proc readers), `stack` (issuer,
sandbox, sidecars, time to ready), `wrk` (load, parsing, `--profile`), `baseline` (the bare
aiohttp app), `swarm` (one renewal under many clients), `run` (options, set-up and the shared
sections), `report` (the table).
"""

from harness.baseline import BareRoute, start_baseline
from harness.processes import (
    CLI,
    OBTAINED,
    PY,
    ROOT,
    Processes,
    children,
    fetch,
    get_ok,
    http,
    http_ok,
    kib_to_mb,
    proc_status,
    read_events,
    wait_until,
)
from harness.report import machine, percentile, report, section, verdict
from harness.run import (
    Bench,
    Figures,
    benchmark,
    parser,
    ready_section,
    record_rss,
    renewal_section,
)
from harness.stack import (
    Sidecar,
    Upstream,
    job_env,
    measure_ready,
    start_sidecar,
    start_upstream,
)
from harness.swarm import RenewalResult, RenewalSpec
from harness.wrk import BARE, Target, WrkResult, profile_targets, run_rounds, run_wrk

__all__ = [
    "BARE",
    "CLI",
    "OBTAINED",
    "PY",
    "ROOT",
    "BareRoute",
    "Bench",
    "Figures",
    "Processes",
    "RenewalResult",
    "RenewalSpec",
    "Sidecar",
    "Target",
    "Upstream",
    "WrkResult",
    "benchmark",
    "children",
    "fetch",
    "get_ok",
    "http",
    "http_ok",
    "job_env",
    "kib_to_mb",
    "machine",
    "measure_ready",
    "parser",
    "percentile",
    "proc_status",
    "profile_targets",
    "read_events",
    "ready_section",
    "record_rss",
    "renewal_section",
    "report",
    "run_rounds",
    "run_wrk",
    "section",
    "start_baseline",
    "start_sidecar",
    "start_upstream",
    "verdict",
    "wait_until",
]
