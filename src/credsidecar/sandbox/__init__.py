"""Embedded local clouds for `credsidecar dev` and the tests.

Each stand-in validates federated tokens the way its cloud does, and storage enforces
per-identity permissions, so access really is granted or denied per user.
"""
