"""`credsidecar preflight`: check, before a run spends hours, that its user can reach its paths."""
