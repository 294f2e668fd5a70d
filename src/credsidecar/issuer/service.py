"""The issuer's operations, independent of HTTP: mint, exchange, revoke, publish keys.

mint      platform asks for a launch token for (user, workspace, pipeline, run)
exchange  a sidecar trades the launch token for a short-lived cloud-audience token (RFC 8693);
          policy, user status and run revocation are checked again every time
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)

from credsidecar.audit import AuditLog
from credsidecar.errors import (
    BadRequest,
    CredsidecarError,
    Forbidden,
    InvalidGrant,
    InvalidTarget,
    NotFound,
)
from credsidecar.issuer.config import IssuerConfig
from credsidecar.issuer.identities import PROVIDERS, AwsIdentity, Identity
from credsidecar.issuer.keys import ALGORITHMS, KeyRing
from credsidecar.issuer.limits import (
    AWS_SOURCE_IDENTITY_CLAIM,
    AWS_TAGS_CLAIM,
    check_claims,
    check_tags,
)
from credsidecar.issuer.policy import Policy
from credsidecar.issuer.policy_watch import PolicyHolder
from credsidecar.issuer.store import Store

if TYPE_CHECKING:
    from credsidecar.issuer.hpc_service import HpcService

__all__ = ["ExchangeResult", "IssuerService", "LaunchRequest", "MintResult"]

# Launch fields end up in AWS session tags and role session names: keep to AWS's tag charset.
_FIELD = re.compile(r"[\w.@:/+=-]{1,128}", re.ASCII)
_PIPELINE = re.compile(r"[\w.@:/+=-]{1,256}", re.ASCII)
_RESOURCE = re.compile(r"urn:credsidecar:identity:(\w+):(.+)")
LAUNCH_TOKEN_USE = "launch"  # noqa: S105 - a claim value, not a secret


@dataclass(frozen=True)
class LaunchRequest:
    user: str
    run: str
    workspace: str | None = None
    pipeline: str | None = None
    selections: Mapping[str, tuple[str, ...]] | None = None
    lifetime: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = set(body) - {"user", "run", "workspace", "pipeline", "identities", "lifetime"}
        if unknown:
            raise BadRequest(f"unknown field(s) {sorted(unknown)} in launch token request")

        def text(key: str, pattern: re.Pattern[str], required: bool) -> str | None:
            value = body.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise BadRequest(
                    f"`{key}` must be a string of up to {128 if pattern is _FIELD else 256} "
                    "letters, digits and _.@:/+=-"
                )
            return value

        selections: dict[str, tuple[str, ...]] = {}
        raw = body.get("identities") or {}
        if not isinstance(raw, dict):
            raise BadRequest("`identities` must map a provider to an identity name or a list")
        for provider, chosen in raw.items():
            if provider not in PROVIDERS:
                raise BadRequest(f"unknown provider {provider!r} in `identities`")
            names = [chosen] if isinstance(chosen, str) else chosen
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise BadRequest(f"`identities.{provider}` must be a name or a list of names")
            selections[provider] = tuple(dict.fromkeys(names))
        lifetime = body.get("lifetime")
        if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)):
            raise BadRequest("`lifetime` must be an integer number of seconds")
        return cls(
            user=str(text("user", _FIELD, True)),
            run=str(text("run", _FIELD, True)),
            workspace=text("workspace", _FIELD, False),
            pipeline=text("pipeline", _PIPELINE, False),
            selections=selections,
            lifetime=lifetime,
        )


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


class IssuerService:
    def __init__(
        self,
        config: IssuerConfig,
        store: Store,
        keys: KeyRing,
        policy: PolicyHolder,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.policy_holder = policy
        self.audit = audit
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    @property
    def policy(self) -> Policy:
        return self.policy_holder.current

    @functools.cached_property
    def hpc(self) -> HpcService:
        """HPC clusters, members' credentials and the SSH CA (hpc_service.py)."""
        from credsidecar.issuer.hpc_registry import HpcRegistry
        from credsidecar.issuer.hpc_service import HpcService
        from credsidecar.issuer.sealing import Sealer, load_kek
        from credsidecar.issuer.ssh_ca import SshCa

        kek = load_kek(self.config.kek_file, self.config.kek_env)
        return HpcService(self, HpcRegistry(self.store), SshCa(self.config.key_dir),
                          Sealer(kek) if kek else None,
                          self.config.ssh_certificate_lifetime)  # fmt: skip

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
        user = self.policy.user(user_id)
        if user.disabled:
            raise Forbidden(f"user {user_id!r} is disabled in the identity policy")
        disabled = self.store.user_disabled(user_id)
        if disabled is not None:
            why = f" ({disabled.reason})" if disabled.reason else ""
            raise Forbidden(f"user {user_id!r} was disabled by an administrator{why}")
        revoked = self.store.run_revocation(run)
        if revoked is not None:
            why = f" ({revoked.reason})" if revoked.reason else ""
            raise Forbidden(
                f"run {run!r} of user {user_id!r} was revoked{why}; start a new run to get "
                "new credentials"
            )

    # mint ---------------------------------------------------------------------------------------

    def mint(self, request: LaunchRequest, caller: str) -> MintResult:
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
                            f"user {request.user!r} may not use {provider} identity {name!r}"
                            f"{where}: no grant in the policy gives it to them"
                            + ("" if granted else f" (they have no {provider} identity at all)")
                        )
                chosen[provider] = [by_name[n] for n in selections[provider]]
            elif granted:
                chosen[provider] = granted
        if not chosen:
            raise Forbidden(
                f"user {request.user!r} has no identity granted{where}; add a [[grants]] entry"
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
                p: [i.descriptor(user.id) for i in identities] for p, identities in chosen.items()
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
        """Verifies signature, issuer, audience, lifetime and purpose of a launch token."""
        if not isinstance(token, str) or not token or len(token) > 2 * 20_000:
            raise InvalidGrant("subject_token is missing or too large")
        try:
            decoded = jwt.decode(token, self.keys.verification_keys(), algorithms=list(ALGORITHMS))
        except (BadSignatureError, DecodeError, ValueError) as exc:
            raise InvalidGrant(
                "subject_token was not signed by this issuer's keys (foreign, tampered or "
                f"malformed token: {exc.__class__.__name__}); mint a new launch token"
            ) from exc
        except JoseError as exc:
            raise InvalidGrant(
                f"subject_token cannot be verified ({exc.description or exc.error}); only "
                f"{', '.join(ALGORITHMS)} tokens from this issuer are accepted"
            ) from exc
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            iss={"essential": True, "value": self.config.issuer_url},
            aud={"essential": True, "value": self.config.issuer_url},
            exp={"essential": True},
            jti={"essential": True},
            run={"essential": True},
            user={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise InvalidGrant(
                f"the launch token of run {claims.get('run')!r} expired at {claims.get('exp')}; "
                "the run outlived its maximum lifetime, so relaunch it"
            ) from exc
        except InvalidClaimError as exc:
            if exc.claim in ("nbf", "iat"):
                raise InvalidGrant(
                    f"subject_token is not valid yet ({exc.description}); check that the "
                    "clocks of the issuer and this host agree"
                ) from exc
            raise InvalidGrant(
                f"subject_token is not a launch token of this issuer: {exc.description}"
            ) from exc
        except (MissingClaimError, JoseError) as exc:
            raise InvalidGrant(
                f"subject_token is not a launch token of this issuer: {exc.description}"
            ) from exc
        if claims.get("token_use") != LAUNCH_TOKEN_USE:
            raise InvalidGrant("subject_token is not a launch token (token_use is not 'launch')")
        return dict(claims)

    def exchange(self, form: Mapping[str, str]) -> ExchangeResult:
        claims: dict[str, Any] = {}
        try:
            claims = self._verify_exchange_request(form)
            return self._exchange(claims, form)
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
        offered: dict[str, list[str]] = {
            p: [d.get("name") for d in ds] for p, ds in claims.get("identities", {}).items()
        }
        if resource:
            match = _RESOURCE.fullmatch(resource)
            if not match:
                raise BadRequest("resource must look like urn:credsidecar:identity:PROVIDER:NAME")
            provider, name = match.groups()
            if name not in offered.get(provider, []):
                raise InvalidTarget(
                    f"{provider} identity {name!r} is not part of run {claims['run']!r}'s launch "
                    f"token (it carries {offered.get(provider) or 'none'})"
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
            f"audience {audience!r} belongs to none of the identities of run {claims['run']!r} "
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
                f"user {user_id!r} may no longer use {provider} identity {name!r}: the policy "
                "in force no longer grants it"
            )
        if identity.audience != audience:
            raise InvalidTarget(
                f"{provider} identity {name!r} expects audience {identity.audience!r}, "
                f"not {audience!r}"
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
        return ExchangeResult(token, out["jti"], exp, provider, identity.descriptor(user.id))

    # revocation ---------------------------------------------------------------------------------

    def revoke_run(self, run: str, reason: str | None, caller: str) -> bool:
        if not _FIELD.fullmatch(run):
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
