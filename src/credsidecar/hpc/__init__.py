"""`credsidecar hpc`: per-user SSH to HPC login nodes with the issuer's certificates or stored
keys (ssh.py), the issuer's HPC API for owners and members (api.py), and the work-directory
preflight (check.py)."""
