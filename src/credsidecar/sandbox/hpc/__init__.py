"""The sandbox's HPC side: login nodes on loopback that need no root (login.py, authorize.py),
Slurm stand-ins (slurm.py), and the two sandbox clusters registered by `credsidecar dev`
(runner.py)."""
