"""Slurm stand-ins for the sandbox login node: `sbatch`, `squeue` and `scancel` on its PATH.

There is no Slurm in the sandbox. So that `credsidecar hpc check` finds the commands a Slurm
site has and `hpc run -- sbatch --parsable job.sh` does what a pipeline expects, `sbatch` runs
the script right here, in the background, with its output in `slurm-JOBID.out` (in the
directory it was submitted from), and prints the job ID; `squeue` lists the jobs still running;
`scancel JOBID` ends one. Each says it is the sandbox's stand-in.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_slurm_stand_ins"]

_SBATCH = r"""#!/bin/sh
# credsidecar sandbox stand-in for sbatch: runs the script here, in the background (no Slurm).
parsable=no
while [ $# -gt 0 ]; do
  case "$1" in
    --parsable) parsable=yes; shift ;;
    --*) shift ;;
    -?) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ] || [ ! -r "$1" ]; then
  echo "sbatch (credsidecar sandbox): give a readable job script" >&2; exit 1
fi
jobs="$SANDBOX_SLURM_DIR"; mkdir -p "$jobs"
id=$(( $(cat "$jobs/last" 2>/dev/null || echo 0) + 1 )); echo "$id" > "$jobs/last"
nohup sh "$@" > "slurm-$id.out" 2>&1 < /dev/null &
echo "$!" > "$jobs/$id.pid"
if [ "$parsable" = yes ]; then echo "$id"; else echo "Submitted batch job $id"; fi
"""

_SQUEUE = r"""#!/bin/sh
# credsidecar sandbox stand-in for squeue: the stand-in sbatch's jobs still running.
echo "JOBID STATE (credsidecar sandbox: no Slurm)"
for f in "$SANDBOX_SLURM_DIR"/*.pid; do
  [ -e "$f" ] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$(basename "$f" .pid) RUNNING"; fi
done
"""

_SCANCEL = r"""#!/bin/sh
# credsidecar sandbox stand-in for scancel: ends the stand-in sbatch's job(s).
for id in "$@"; do
  f="$SANDBOX_SLURM_DIR/$id.pid"
  if [ -e "$f" ]; then kill "$(cat "$f")" 2>/dev/null; rm -f "$f"
  else echo "scancel (credsidecar sandbox): no job $id" >&2; fi
done
"""


def write_slurm_stand_ins(bin_dir: Path) -> None:
    """Writes the three commands into `bin_dir` (created), executable by the owner only."""
    bin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, text in (("sbatch", _SBATCH), ("squeue", _SQUEUE), ("scancel", _SCANCEL)):
        path = bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o700)
