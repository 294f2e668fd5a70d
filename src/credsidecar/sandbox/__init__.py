"""Embedded local clouds for `credsidecar dev` and the tests.

Each stand-in validates federated tokens the way its cloud does, and storage enforces
per-identity permissions, so access really is granted or denied per user.

One subpackage per cloud (`aws/`, `gcp/`, `azure/`, each with a `runner.py` that starts it);
shared at the top: the seed data (`seed.py`, from which the example policy is generated), the
issuer-key cache (`jwks.py`), the test hooks (`hooks.py`), serving on a bound port
(`serving.py`) and `runner.py`, which starts every cloud.
"""
