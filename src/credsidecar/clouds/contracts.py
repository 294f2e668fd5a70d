"""What crosses from the exchangers to the cache and endpoints: credential value types and the
clouds' well-known defaults. No SDK and no HTTP client here, so the endpoints, the config and
the CLI can import it for free (`credsidecar env` runs at the start of every job).

Every credential type keeps its secret out of `repr()`, so it cannot reach a log by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AWS_DEFAULT_AUDIENCE",
    "AWS_DEFAULT_DURATION",
    "AWS_NODE_IMDS_URL",
    "AZURE_AUDIENCE",
    "AZURE_AUTHORITY",
    "AZURE_NODE_IMDS_URL",
    "GCP_CLOUD_PLATFORM",
    "GCP_IAM_URL",
    "GCP_NODE_METADATA_URL",
    "GCP_STS_URL",
    "AwsCredentials",
    "AzureIdentityRef",
    "AzureToken",
    "GcpIdToken",
    "GcpToken",
]

# AWS: the audience an OIDC provider is registered with by default; AssumeRoleWithWebIdentity
# lifetimes are 900..43200 s, and one hour keeps served credentials far from botocore's
# 15-minute refresh window with renewal at half-life.
AWS_DEFAULT_AUDIENCE = "sts.amazonaws.com"
AWS_DEFAULT_DURATION = 3600
# GCP: the scope google-auth asks the metadata server for by default, and the public endpoints.
GCP_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GCP_STS_URL = "https://sts.googleapis.com/v1/token"
GCP_IAM_URL = "https://iamcredentials.googleapis.com"
# The node's own metadata server, which holds the node's service account (`source = "node"`).
GCP_NODE_METADATA_URL = "http://metadata.google.internal"
# Azure: Entra's public authority and the audience of a federated credential's assertion.
AZURE_AUTHORITY = "https://login.microsoftonline.com"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
# The node's own IMDS (EC2), which holds the node's instance profile (`source = "node"`).
AWS_NODE_IMDS_URL = "http://169.254.169.254"
# The node's own IMDS, which holds the node's managed identities (`source = "node"` grants).
AZURE_NODE_IMDS_URL = "http://169.254.169.254"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float  # wall-clock epoch seconds
    role_arn: str
    assumed_role_arn: str
    account_id: str

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return f"AwsCredentials({self.access_key_id}, {self.assumed_role_arn}, {self.expires_at})"

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class GcpToken:
    access_token: str
    expires_at: float
    scopes: tuple[str, ...]

    def __repr__(self) -> str:
        return f"GcpToken(scopes={self.scopes}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class GcpIdToken:
    token: str
    expires_at: float
    audience: str

    def __repr__(self) -> str:
        return f"GcpIdToken(audience={self.audience!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class AzureIdentityRef:
    """One granted Azure identity, as the launch token describes it."""

    name: str
    tenant_id: str
    client_id: str
    audience: str = AZURE_AUDIENCE
    object_id: str | None = None
    resource_id: str | None = None

    def matches(self, client_id: str | None, object_id: str | None, mi_res_id: str | None) -> bool:
        """Whether an SDK's selector (at most one is sent) names this identity."""
        if client_id:
            return client_id.lower() == self.client_id.lower()
        if object_id:
            return bool(self.object_id) and object_id.lower() == str(self.object_id).lower()
        if mi_res_id:
            return bool(self.resource_id) and mi_res_id.lower() == str(self.resource_id).lower()
        return True


@dataclass(frozen=True)
class AzureToken:
    access_token: str
    expires_at: float
    resource: str
    client_id: str

    def __repr__(self) -> str:
        return f"AzureToken({self.client_id}, {self.resource}, expires_at={self.expires_at})"
