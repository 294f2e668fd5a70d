"""The issuer's operations, independent of HTTP: mint, exchange, revoke, publish keys.

mint      platform asks for a launch token for (user, workspace, pipeline, run)
exchange  a sidecar trades the launch token for a short-lived cloud-audience token (RFC 8693);
          policy, user status and run revocation are checked again every time
revoke    runs and users (admins, the platform); rotate-key for the signing keys

Launch requests are parsed in launch_request.py and launch tokens verified in launch_tokens.py;
HPC is a separate service (hpc_service.py) that assembly.py gives only what it uses.
A little over ~400 lines: mint and exchange share their checks (policy, user, run, limits), and
are clearer read in one place than split.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from credsidecar.audit import AuditLog
from credsidecar.errors import (
    BadRequest,
    CredsidecarError,
    Forbidden,
    InvalidGrant,
    InvalidTarget,
    NotFound,
    RateLimited,
    bounded,
)
from credsidecar.issuer.config import IssuerConfig
from credsidecar.issuer.identities import PROVIDERS, AwsIdentity, Identity
from credsidecar.issuer.keys import ALGORITHMS, KeyRing
from credsidecar.issuer.launch_request import FIELD, LaunchRequest
from credsidecar.issuer.launch_tokens import LAUNCH_TOKEN_USE, LaunchTokenVerifier
from credsidecar.issuer.limits import (
    AWS_SOURCE_IDENTITY_CLAIM,
    AWS_TAGS_CLAIM,
    check_claims,
    check_tags,
)
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.rate_limits import RateLimiter
from credsidecar.issuer.store import Revocation, Store
from credsidecar.launch.grants import Grants, parse_identity_urn

__all__ = ["ExchangeResult", "IssuerService", "LaunchRequest", "MintResult"]


@dataclass(frozen=True)
class MintResult:
    token: str
    jti: str
    kid: str
    expires_at: int
    identities: Mapping[str, list[str]]


@dataclass(frozen=True)
class ExchangeResult:
    token: str
    jti: str
    expires_at: int
    provider: str
    identity: Mapping[str, Any]


def _explain_hint(user: str, workspace: str | None, pipeline: str | None) -> str:
    """The command that shows what this launch is granted, and why."""
    command = f"credsidecar issuer explain --config CONFIG --user {user}"
    command += f" --workspace {workspace}" if workspace else ""
    command += f" --pipeline {pipeline}" if pipeline else ""
    return f"`{command}` shows what the policy grants"


class IssuerService:
    def __init__(
        self,
        config: IssuerConfig,
        store: Store,
        keys: KeyRing,
        policy: PolicyHolder,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.policy_holder = policy
        self.audit = audit
        self._clock = clock
        # `[rate_limits]`, checked before anything is looked up or signed; None: all off.
        self.limiter = limiter
        self._launch_tokens = LaunchTokenVerifier(keys, config.issuer_url, clock)

    def now(self) -> int:
        return int(self._clock())

    @property
    def policy(self) -> Policy:
        return self.policy_holder.current

    # discovery ----------------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        base = self.config.issuer_url
        return {
            "issuer": base,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "token_endpoint": f"{base}/v1/token",
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": list(ALGORITHMS),
            "claims_supported": [
                "sub",
                "aud",
                "exp",
                "iat",
                "iss",
                "jti",
                "nbf",
                "user",
                "email",
                "workspace",
                "pipeline",
                "run",
                "identity",
                AWS_SOURCE_IDENTITY_CLAIM,
                AWS_TAGS_CLAIM,
            ],
        }

    # checks shared by mint and exchange --------------------------------------------------------

    def check_active(self, user_id: str, run: str) -> None:
        # One store round trip for both (every mint and exchange asks the store, so a
        # revocation made through any replica applies at the very next request everywhere).
        disabled, revoked = self.store.access_status(user_id, run)
        self._check_user(user_id, run, disabled)
        if revoked is not None:
            why = f" ({bounded(revoked.reason, 200)})" if revoked.reason else ""
            raise Forbidden(
                f"run {run!r} of user {user_id!r} was revoked{why}; start a new run to get "
                "new credentials"
            )

    def check_user_active(self, user_id: str, run: str | None = None) -> None:
        """Forbidden unless the policy knows `user_id` and neither it nor an admin disabled them."""
        self._check_user(user_id, run, self.store.user_disabled(user_id))

    def _check_user(self, user_id: str, run: str | None, disabled: Revocation | None) -> None:
        user = self.policy.user(user_id)
        of_run = f" (run {run!r})" if run else ""
        if user.disabled:
            raise Forbidden(
                f"user {user_id!r}{of_run} is disabled in the identity policy; remove "
                f"`disabled = true` from their [[users]] entry to let them launch again"
            )
        if disabled is not None:
            why = f" ({bounded(disabled.reason, 200)})" if disabled.reason else ""
            raise Forbidden(
                f"user {user_id!r}{of_run} was disabled by an administrator{why}; "
                f"`credsidecar issuer enable-user {user_id}` lets them launch again"
            )

    # mint ---------------------------------------------------------------------------------------

    def mint(self, request: LaunchRequest, caller: str) -> MintResult:
        if self.limiter is not None:  # RateLimited: audited by the limiter, once per window
            self.limiter.mint(caller, request.run)
        try:
            return self._mint(request, caller)
        except CredsidecarError as exc:
            self.audit.event(
                "launch_token.refused",
                user=request.user,
                workspace=request.workspace,
                run=request.run,
                caller=caller,
                reason=exc.message,
            )
            raise

    def _mint(self, request: LaunchRequest, caller: str) -> MintResult:
        policy = self.policy
        self.check_active(request.user, request.run)
        policy.check_membership(request.user, request.workspace)
        lifetime = request.lifetime or self.config.launch_lifetime
        if not 60 <= lifetime <= self.config.max_launch_lifetime:
            raise BadRequest(
                f"lifetime {lifetime}s is outside 60..{self.config.max_launch_lifetime}s "
                "allowed by the issuer config"
            )
        where = f" in workspace {request.workspace!r}" if request.workspace else ""
        selections = request.selections or {}
        chosen: dict[str, list[Identity]] = {}
        for provider in PROVIDERS:
            granted = policy.granted(request.user, request.workspace, request.pipeline, provider)
            by_name = {i.name: i for i in granted}
            if provider in selections:
                for name in selections[provider]:
                    if name not in by_name:
                        raise Forbidden(
                            f"user {request.user!r} (run {request.run!r}) may not use {provider} "
                            f"identity {name!r}{where}: no grant in the policy gives it to them"
                            + (
                                f" (they may use {', '.join(by_name)})"
                                if granted
                                else f" (they have no {provider} identity at all)"
                            )
                            + f"; add it to a [[grants]] entry for them, or select a granted one "
                            f"({_explain_hint(request.user, request.workspace, request.pipeline)})"
                        )
                chosen[provider] = [by_name[n] for n in selections[provider]]
            elif granted:
                chosen[provider] = granted
        if not chosen:
            raise Forbidden(
                f"user {request.user!r} has no identity granted{where}; add a [[grants]] entry "
                f"for them or their workspace "
                f"({_explain_hint(request.user, request.workspace, request.pipeline)})"
            )
        user = policy.user(request.user)
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.config.issuer_url,
            "aud": self.config.issuer_url,
            "sub": user.subject,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "token_use": LAUNCH_TOKEN_USE,
            "user": user.id,
            "run": request.run,
            "identities": {
                p: [i.grant(user.id).to_claim() for i in identities]
                for p, identities in chosen.items()
            },
        }
        for key in ("workspace", "pipeline"):
            if getattr(request, key):
                claims[key] = getattr(request, key)
        if user.email:
            claims["email"] = user.email
        check_claims(claims)
        token, kid = self.keys.sign(claims)
        names = {p: [i.name for i in identities] for p, identities in chosen.items()}
        self.audit.event(
            "launch_token.minted",
            user=user.id,
            workspace=request.workspace,
            pipeline=request.pipeline,
            run=request.run,
            identities=names,
            jti=claims["jti"],
            kid=kid,
            exp=claims["exp"],
            caller=caller,
        )
        return MintResult(token, claims["jti"], kid, claims["exp"], names)

    # exchange -----------------------------------------------------------------------------------

    def verify_launch_token(self, token: str) -> dict[str, Any]:
        """The claims of a launch token this issuer signed (launch_tokens.py checks it)."""
        return self._launch_tokens.verify(token)

    def exchange(self, form: Mapping[str, str]) -> ExchangeResult:
        claims: dict[str, Any] = {}
        try:
            claims = self._verify_exchange_request(form)
            if self.limiter is not None:  # keyed on the verified run, never on garbage
                self.limiter.exchange(str(claims["run"]))
            return self._exchange(claims, form)
        except RateLimited:
            raise  # audited by the limiter once per run and window, not once per refusal
        except CredsidecarError as exc:
            self.audit.event(
                "token.exchange_refused",
                user=claims.get("user"),
                run=claims.get("run"),
                launch_jti=claims.get("jti"),
                audience=form.get("audience"),
                reason=exc.message,
            )
            raise

    def _verify_exchange_request(self, form: Mapping[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type")
        if grant != "urn:ietf:params:oauth:grant-type:token-exchange":
            raise BadRequest(
                "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693)"
            )
        if form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
            raise BadRequest("subject_token_type must be urn:ietf:params:oauth:token-type:jwt")
        if not form.get("audience"):
            raise BadRequest("audience is required: the audience the cloud expects")
        return self.verify_launch_token(form.get("subject_token", ""))

    def _pick_identity(
        self, claims: Mapping[str, Any], audience: str, resource: str | None
    ) -> tuple[str, str]:
        grants = Grants.from_claim(claims.get("identities"), error=InvalidGrant)
        offered = {p: grants.names(p) for p in PROVIDERS if grants.names(p)}
        if resource:
            provider, name = parse_identity_urn(resource)
            if name not in offered.get(provider, []):
                carried = ", ".join(offered.get(provider, [])) or f"no {provider} identity"
                raise InvalidTarget(
                    f"{provider} identity {bounded(name, 128)!r} is not in the launch token of "
                    f"run {claims['run']!r} of user {claims['user']!r} (it carries {carried}); "
                    "select it when the run is launched, or use one the token carries"
                )
            return provider, name
        catalogue = self.policy.identities
        for provider, names in offered.items():
            identity = catalogue.get(provider, {}).get(names[0]) if names else None
            if identity is not None and identity.audience == audience:
                return provider, names[0]
        known = {
            p: getattr(catalogue.get(p, {}).get(n[0]), "audience", None) for p, n in offered.items()
        }
        raise InvalidTarget(
            f"audience {bounded(audience, 200)!r} belongs to none of the identities of run "
            f"{claims['run']!r} of user {claims['user']!r} "
            f"(their audiences: {', '.join(f'{p}={a}' for p, a in known.items() if a) or 'none'})"
        )

    def _exchange(self, claims: Mapping[str, Any], form: Mapping[str, str]) -> ExchangeResult:
        audience = form["audience"]
        user_id, run = str(claims["user"]), str(claims["run"])
        workspace, pipeline = claims.get("workspace"), claims.get("pipeline")
        self.check_active(user_id, run)
        policy = self.policy
        policy.check_membership(user_id, workspace)
        provider, name = self._pick_identity(claims, audience, form.get("resource"))
        granted = {i.name: i for i in policy.granted(user_id, workspace, pipeline, provider)}
        identity = granted.get(name)
        if identity is None:
            raise Forbidden(
                f"user {user_id!r} (run {run!r}) may no longer use {provider} identity {name!r}: "
                "the policy in force no longer grants it; grant it again, or start a new run "
                "with an identity the policy grants "
                f"({_explain_hint(user_id, workspace, pipeline)})"
            )
        if identity.audience is None and provider == "azure":  # source = "node"
            raise InvalidTarget(
                f"azure identity {name!r} of user {user_id!r} (run {run!r}) is the node's own "
                "managed identity: the sidecar asks the node's IMDS for it, and the issuer mints "
                "no federated token for it"
            )
        if identity.audience is None and provider == "aws":  # source = "node"
            raise InvalidTarget(
                f"aws identity {name!r} of user {user_id!r} (run {run!r}) is the node's own "
                "instance profile: the sidecar asks the node's IMDS for it, and the issuer "
                "mints no federated token for it"
            )
        if identity.audience is None and provider == "gcp":  # source = "node"
            raise InvalidTarget(
                f"gcp identity {name!r} of user {user_id!r} (run {run!r}) is the node's own "
                "service account: the sidecar asks the node's metadata server for it, and the "
                "issuer mints no federated token for it"
            )
        if identity.audience != audience:
            raise InvalidTarget(
                f"{provider} identity {name!r} of user {user_id!r} (run {run!r}) expects audience "
                f"{identity.audience!r}, not {bounded(audience, 200)!r}; set the sidecar's "
                f"audience for {provider} to {identity.audience!r} (or leave it unset)"
            )
        user = policy.user(user_id)
        now = int(self._clock())
        exp = min(now + self.config.exchange_lifetime, int(claims["exp"]))
        out: dict[str, Any] = {
            "iss": self.config.issuer_url,
            "aud": audience,
            "sub": identity.subject_for(user.subject),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
            "user": user.id,
            "run": run,
            "identity": name,
            "launch_jti": claims["jti"],
        }
        for key in ("workspace", "pipeline"):
            if claims.get(key):
                out[key] = claims[key]
        if user.email:
            out["email"] = user.email
        if isinstance(identity, AwsIdentity):
            out[AWS_SOURCE_IDENTITY_CLAIM] = user.aws_source_identity
            tags = {"user": user.id, "run": run}
            for key in ("workspace", "pipeline"):
                if claims.get(key):
                    tags[key] = claims[key]
            tags.update(identity.session_tags)
            check_tags(tags)
            out[AWS_TAGS_CLAIM] = {"principal_tags": {k: [v] for k, v in tags.items()}}
        check_claims(out)
        token, kid = self.keys.sign(out)
        self.audit.event(
            "token.exchanged",
            user=user.id,
            workspace=workspace,
            run=run,
            provider=provider,
            identity=name,
            audience=audience,
            launch_jti=claims["jti"],
            jti=out["jti"],
            kid=kid,
            exp=exp,
        )
        return ExchangeResult(token, out["jti"], exp, provider, identity.grant(user.id).to_claim())

    # keys ---------------------------------------------------------------------------------------

    def rotate_key(self, stage: bool) -> str:
        """A new signing key, active now or (`stage`) only published; returns its kid."""
        kid = self.keys.rotate(stage=stage)
        self.audit.event("key.staged" if stage else "key.rotated", kid=kid)
        return kid

    # revocation ---------------------------------------------------------------------------------

    def revoke_run(self, run: str, reason: str | None, caller: str) -> bool:
        if not FIELD.fullmatch(run):
            raise BadRequest("run id must be up to 128 letters, digits and _.@:/+=-")
        fresh = self.store.revoke_run(run, int(self._clock()), reason)
        self.audit.event("run.revoked", run=run, reason=reason, caller=caller, first=fresh)
        return fresh

    def set_user_disabled(
        self, user_id: str, disabled: bool, reason: str | None, caller: str
    ) -> None:
        if user_id not in self.policy.users:
            raise NotFound(f"user {user_id!r} is not in the identity policy")
        if disabled:
            self.store.disable_user(user_id, int(self._clock()), reason)
        else:
            self.store.enable_user(user_id)
        self.audit.event(
            "user.disabled" if disabled else "user.enabled",
            user=user_id,
            reason=reason,
            caller=caller,
        )
