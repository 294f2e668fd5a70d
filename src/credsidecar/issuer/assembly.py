"""The issuer composed once, at start-up: each service gets only the collaborators it uses.

    Issuer
    ├── tokens        IssuerService   mint, exchange, revoke, rotate keys, discovery (service.py)
    ├── hpc           HpcService      clusters, member keys, stored credentials (hpc_service.py)
    └── hpc_launches  HpcLaunches     SSH certificates and stored-key signing (hpc_launch.py)

The HPC services get the policy holder, store or HPC registry, audit log, SSH CA and sealer,
and the launches a launch verifier and the clock; neither gets `tokens` itself.

Everything that can be wrong in the configuration is read here, so that it fails when the issuer
(or an admin command) starts, with a readable ConfigError: the key-encryption key of stored SSH
keys included, which once failed only at the first HPC request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from credsidecar.audit import AuditLog
from credsidecar.issuer.config import IssuerConfig
from credsidecar.issuer.hpc_launch import HpcLaunches, LaunchVerifier
from credsidecar.issuer.hpc_registry import HpcRegistry
from credsidecar.issuer.hpc_service import HpcService
from credsidecar.issuer.keys import KeyRing
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.rate_limits import rate_limiter
from credsidecar.issuer.sealing import Sealer, load_kek
from credsidecar.issuer.service import IssuerService
from credsidecar.issuer.ssh_ca import SshCa
from credsidecar.issuer.store import Store

__all__ = ["Issuer", "assemble"]


@dataclass(frozen=True)
class Issuer:
    """The issuer's services and the state they share (closed by whoever opened it)."""

    config: IssuerConfig
    store: Store
    keys: KeyRing
    policy_holder: PolicyHolder
    audit: AuditLog
    tokens: IssuerService
    hpc: HpcService
    hpc_launches: HpcLaunches

    @property
    def policy(self) -> Policy:
        return self.policy_holder.current


def _active_launch(tokens: IssuerService) -> LaunchVerifier:
    """HPC launches accept a launch token on the terms token exchange does: signed by us, not
    expired, its run not revoked and its user not disabled."""

    def verify(token: str) -> Mapping[str, Any]:
        claims = tokens.verify_launch_token(token)
        tokens.check_active(str(claims["user"]), str(claims["run"]))
        return claims

    return verify


def assemble(
    config: IssuerConfig,
    store: Store,
    keys: KeyRing,
    policy_holder: PolicyHolder,
    audit: AuditLog,
    clock: Callable[[], float] = time.time,
    *,
    share: int = 1,
    mono: Callable[[], float] = time.monotonic,
) -> Issuer:
    """Builds the services; raises ConfigError for a bad key-encryption key.

    `share`: the worker processes serving this node, among which `[rate_limits]` are divided;
    `mono`: the rate limits' monotonic clock."""
    kek = load_kek(config.kek_file, config.kek_env)
    sealer = Sealer(kek) if kek else None
    limiter = rate_limiter(config, share=share, clock=mono, audit=audit)
    tokens = IssuerService(config, store, keys, policy_holder, audit, clock, limiter)
    # One CA for every replica: sealed in a shared store (PostgreSQL), a file otherwise.
    shared = store if store.dialect == "postgres" else None
    registry, ca = HpcRegistry(store), SshCa(config.key_dir, store=shared, sealer=sealer)
    hpc = HpcService(
        policy=policy_holder, store=store, registry=registry, audit=audit, ca=ca, sealer=sealer
    )
    launches = HpcLaunches(
        policy=policy_holder,
        registry=registry,
        audit=audit,
        verify_launch=_active_launch(tokens),
        ca=ca,
        sealer=sealer,
        certificate_lifetime=config.ssh_certificate_lifetime,
        clock=clock,
    )
    return Issuer(config, store, keys, policy_holder, audit, tokens, hpc, launches)
