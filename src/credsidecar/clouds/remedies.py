"""What to do about a cloud's refusal: one place that writes the "fix" half of every message.

An exchanger (aws.py, gcp.py, azure.py) knows which cloud call failed and with which code; this
module turns that cause into the sentence an administrator can act on, in the cloud's own terms:
the trust-policy statement to add, the workload identity provider setting to change, the
`principal://` member to bind, the federated credential (issuer, subject, audience) to create.

The facts come from the federated token the cloud was shown: its `iss`, `sub` and `aud` claims
say exactly what the cloud compared against its configuration. They are read without verifying
(the cloud did that) and are not secret; the token itself never enters a message. Values a
caller or an upstream controls are cut by `errors.bounded` before they are quoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from credsidecar.errors import CredsidecarError, bounded
from credsidecar.launch.jwt_parts import unverified_payload

__all__ = [
    "AwsCause",
    "AzureCause",
    "GcpStsCause",
    "Presented",
    "aws_fix",
    "azure_fix",
    "gcp_iam_fix",
    "gcp_principal",
    "gcp_sts_fix",
    "supplier_refusal",
]


@dataclass(frozen=True)
class Presented:
    """What the cloud was shown: the federated token's issuer, subject and audience."""

    issuer: str
    subject: str
    audience: str

    @classmethod
    def of(cls, token: str, audience: str) -> Presented:
        """The claims of `token`; what is missing or unreadable is said as such."""
        try:
            claims: Any = unverified_payload(token)
        except ValueError:
            claims = {}
        if not isinstance(claims, dict):
            claims = {}
        aud = claims.get("aud", audience)
        aud = aud[0] if isinstance(aud, list) and aud else aud
        return cls(
            issuer=bounded(claims.get("iss") or "(the token names no issuer)"),
            subject=bounded(claims.get("sub") or "(the token names no subject)"),
            audience=bounded(aud or audience),
        )

    @property
    def host_path(self) -> str:
        """The issuer without its scheme: how IAM names the OIDC provider and its condition keys."""
        return self.issuer.split("://", 1)[-1].rstrip("/")


AwsCause = Literal[
    "trust", "no-role", "no-provider", "audience", "unverifiable", "expired", "idp-unreachable"
]
GcpStsCause = Literal["audience", "issuer", "condition", "target", "keys", "expired"]
AzureCause = Literal["no-federated-credential", "no-app", "no-tenant", "keys", "time", "resource"]


def supplier_refusal(exc: CredsidecarError, who: str, target: str) -> CredsidecarError:
    """The issuer's refusal (or absence) restated to name the launch and the identity."""
    return exc.restated(f"{who} cannot get credentials for {target}: {exc.message}")


# AWS ---------------------------------------------------------------------------------------------


def _account(role_arn: str) -> str:
    parts = role_arn.split(":")
    return parts[4] if len(parts) > 4 else "ACCOUNT"


def aws_fix(cause: AwsCause, role_arn: str, seen: Presented) -> str:
    """The fix for an AssumeRoleWithWebIdentity refusal `cause`."""
    provider_arn = f"arn:aws:iam::{_account(role_arn)}:oidc-provider/{seen.host_path}"
    discovery = f"{seen.issuer.rstrip('/')}/.well-known/openid-configuration"
    if cause == "trust":
        return (
            f"add a statement to the trust policy of {role_arn}: Effect Allow, Principal "
            f'{{"Federated": "{provider_arn}"}}, Action sts:AssumeRoleWithWebIdentity, Condition '
            f'StringEquals {{"{seen.host_path}:aud": "{seen.audience}", '
            f'"{seen.host_path}:sub": "{seen.subject}"}} (or a StringLike pattern matching it)'
        )
    if cause == "no-role":
        return f"create role {role_arn}, or correct the role_arn of this identity in the policy"
    if cause == "no-provider":
        return (
            f"create the IAM OIDC identity provider for {seen.issuer} in account "
            f"{_account(role_arn)}: aws iam create-open-id-connect-provider --url {seen.issuer} "
            f"--client-id-list {seen.audience}"
        )
    if cause == "audience":
        return (
            f"add {seen.audience} to the client IDs of {provider_arn}: aws iam "
            f"add-client-id-to-open-id-connect-provider --open-id-connect-provider-arn "
            f"{provider_arn} --client-id {seen.audience} (or set the identity's audience in the "
            "policy to one it lists)"
        )
    if cause == "unverifiable":
        return (
            f"check that {discovery} and its jwks_uri serve the issuer's current keys over "
            f"HTTPS, and that the thumbprint of {provider_arn} matches the issuer's TLS "
            "certificate chain"
        )
    if cause == "expired":
        return "check that this host's clock and the issuer's agree (NTP), then retry"
    if cause == "idp-unreachable":
        return (
            f"make {discovery} and its jwks_uri reachable from the internet over HTTPS "
            "(`credsidecar issuer export-discovery` writes files a public bucket can serve); "
            "retrying"
        )
    raise ValueError(f"no AWS remedy for {cause!r}")


# GCP ---------------------------------------------------------------------------------------------


def gcp_principal(provider_audience: str, subject: str) -> str:
    """The IAM member for one federated subject of the provider's pool:
    principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S
    """
    resource = provider_audience.removeprefix("https:").removeprefix("//iam.googleapis.com/")
    pool = resource.split("/providers/", 1)[0]
    return f"principal://iam.googleapis.com/{pool}/subject/{subject}"


def gcp_sts_fix(cause: GcpStsCause, provider_audience: str, seen: Presented) -> str:
    """The fix for a Google STS refusal `cause` for the workload identity provider."""
    provider = bounded(provider_audience.removeprefix("//iam.googleapis.com/"))
    update = f"gcloud iam workload-identity-pools providers update-oidc {provider}"
    if cause == "audience":
        return (
            f"add {seen.audience} to the provider's allowed audiences ({update} "
            f"--allowed-audiences=...,{seen.audience}), or set the identity's audience in the "
            "policy to the provider's resource name"
        )
    if cause == "issuer":
        return f"set the provider's issuer to {seen.issuer} ({update} --issuer-uri={seen.issuer})"
    if cause == "condition":
        return (
            f"make the provider's attribute condition admit assertion.sub == '{seen.subject}' "
            f"({update} --attribute-condition=...)"
        )
    if cause == "target":
        return (
            f"check that provider {provider} exists and that neither it nor its pool is "
            "disabled or deleted, or correct the identity's audience in the policy"
        )
    if cause == "keys":
        return (
            f"make {seen.issuer.rstrip('/')}/.well-known/openid-configuration and its jwks_uri "
            "reachable from Google over HTTPS and serving the issuer's current keys"
        )
    if cause == "expired":
        return "check that this host's clock and the issuer's agree (NTP), then retry"
    raise ValueError(f"no GCP remedy for {cause!r}")


def gcp_iam_fix(service_account: str, provider_audience: str, seen: Presented) -> str:
    """The binding that lets the user's federated principal impersonate `service_account`."""
    member = gcp_principal(provider_audience, seen.subject)
    return (
        f"grant it roles/iam.workloadIdentityUser on {service_account}: gcloud iam "
        f"service-accounts add-iam-policy-binding {service_account} "
        f"--role=roles/iam.workloadIdentityUser --member={member}"
    )


# Azure -------------------------------------------------------------------------------------------


def azure_fix(
    cause: AzureCause, client_id: str, tenant_id: str, seen: Presented, resource: str = ""
) -> str:
    """The fix for an Entra refusal `cause` for the identity `client_id` in `tenant_id`."""
    if cause == "no-federated-credential":
        return (
            f"add a federated credential with exactly these three to it (az identity "
            f"federated-credential create --identity-name NAME --resource-group GROUP --issuer "
            f"{seen.issuer} --subject {seen.subject} --audiences {seen.audience}; for an app "
            f"registration, az ad app federated-credential create --id {client_id})"
        )
    if cause == "no-app":
        return (
            f"check the identity's client_id and tenant_id in the policy: no application or "
            f"managed identity {client_id} exists in tenant {tenant_id}"
        )
    if cause == "no-tenant":
        return f"correct the identity's tenant_id in the policy ({tenant_id} is not a tenant)"
    if cause == "keys":
        return (
            f"make {seen.issuer.rstrip('/')}/.well-known/openid-configuration and its jwks_uri "
            "reachable from Entra over HTTPS and serving the issuer's current signing keys"
        )
    if cause == "time":
        return "check that this host's clock and the issuer's agree (NTP), then retry"
    if cause == "resource":
        return (
            f"ask for a resource tenant {tenant_id} knows (an application ID URI such as "
            f"https://storage.azure.com/); {bounded(resource, 100)!r} is not one"
        )
    raise ValueError(f"no Azure remedy for {cause!r}")
