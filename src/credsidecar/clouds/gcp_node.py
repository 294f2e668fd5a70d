"""GCP: the node's own service account, from the node's metadata server (`source = "node"`).

    GET {node metadata}/computeMetadata/v1/instance/service-accounts/default/token?scopes=S
        Metadata-Flavor: Google                  --> {"access_token", "expires_in", "token_type"}
    [then, with `service_account`: IAM Credentials generateAccessToken / generateIdToken with
     that token as bearer, the same step as after federation (clouds/gcp.py)]

The node (a GCE VM, a GKE node) runs as one service account; the sidecar asks for its token
only when the launch token grants a node-sourced identity, and the job, which must not reach
the node's metadata server itself, gets only that identity. Nothing of the issuer's is
presented: the identity is the node's, the grant is the issuer's decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import aiohttp

from credsidecar.clouds.contracts import GCP_NODE_METADATA_URL, GcpIdToken
from credsidecar.clouds.gcp import GcpExchanger, GcpSettings
from credsidecar.clouds.remedies import Presented
from credsidecar.clouds.upstream_http import request
from credsidecar.errors import BadRequest, CredsidecarError, Forbidden, Unavailable, bounded
from credsidecar.launch.exchange import TokenSupplier

__all__ = ["NODE_METADATA_URL", "NODE_TOKEN_PATH", "GcpNodeExchanger"]

NODE_METADATA_URL = GCP_NODE_METADATA_URL
NODE_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"  # noqa: S105
_NODE = "the node's metadata server"


class GcpNodeExchanger(GcpExchanger):
    """GcpExchanger whose first step is the node's metadata server instead of Google STS; the
    impersonation step (and its requests) are GcpExchanger's own."""

    def __init__(
        self,
        settings: GcpSettings,
        supplier: TokenSupplier,
        session: aiohttp.ClientSession,
        who: str,
        metadata_url: str = NODE_METADATA_URL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, supplier, session, who, clock)
        self._url = metadata_url.rstrip("/") + NODE_TOKEN_PATH

    @property
    def description(self) -> str:
        target = self.settings.service_account or "the node's service account"
        return f"{self._who} as {target} via {_NODE} at {self._url}"

    @property
    def _target(self) -> str:
        s = self.settings
        target = s.service_account or "the node's service account"
        return f"gcp node identity {s.identity_name!r} ({target})"

    async def _federated(self, scopes: Sequence[str]) -> tuple[str, float, Presented]:
        """The node's service account token (for `scopes`), its expiry, and a placeholder for
        what was presented (nothing of the issuer's)."""
        url = f"{self._url}?{urlencode({'scopes': ','.join(scopes)})}"
        started = self._clock()
        resp = await request(
            self._session, "GET", url, _NODE, headers={"Metadata-Flavor": "Google"},
            who=self._who,
            hint="is the sidecar on a GCE/GKE node, and --gcp-node-metadata-url right?",
        )  # fmt: skip
        body = resp.fields()
        token = body.get("access_token")
        if resp.status == 200 and isinstance(token, str) and token:
            try:
                lifetime = float(str(body.get("expires_in")))
            except ValueError:
                raise Unavailable(
                    f"{_NODE} answered {self._who} a token without expires_in ({self._target})"
                ) from None
            return token, started + lifetime, Presented("the node", "the node", "")
        raise self._node_error(resp.status, body)

    def _node_error(self, status: int, body: dict[str, Any]) -> CredsidecarError:
        said = bounded(body.get("error_description") or body.get("error") or f"HTTP {status}")
        said = f"{_NODE} said (HTTP {status}): {said}"
        if status >= 500 or status == 429:
            return Unavailable(f"{_NODE} failed for {self._who} as {self._target}; retrying. "
                               f"{said}")  # fmt: skip
        if status == 404:
            return Forbidden(
                f"{self._who} may not use {self._target}: the node has no service account; "
                f"attach one to the VM (or node pool), or grant another identity. {said}"
            )
        return Forbidden(f"{self._who} may not use {self._target}: {_NODE} refused. {said}")

    def _iam_head(self, sa: str) -> str:
        return (
            f"{self._who} may not impersonate {sa} with the node's service account (gcp node "
            f"identity {self.settings.identity_name!r})"
        )

    def _iam_denied(self, permission: str, sa: str, seen: Presented) -> str:
        return (
            f"{permission} denied; grant the node's service account "
            f"roles/iam.serviceAccountTokenCreator on {sa}"
        )

    def _iam_unauthorized(self, seen: Presented) -> str:
        return (
            "IAM did not accept the node's token; does the node's service account have the "
            "cloud-platform scope?"
        )

    async def id_token(self, audience: str) -> GcpIdToken:
        if self.settings.service_account is None:
            raise BadRequest(
                f"ID tokens need a service account to impersonate: gcp node identity "
                f"{self.settings.identity_name!r} of {self._who} is the node's own account; "
                "add `service_account` to it in the policy"
            )
        return await super().id_token(audience)
