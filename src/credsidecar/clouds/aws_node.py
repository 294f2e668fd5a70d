"""AWS: the node's own instance profile, from the node's IMDS (`source = "node"`).

    PUT {node IMDS}/latest/api/token        X-aws-ec2-metadata-token-ttl-seconds: 21600 -> T
    GET {node IMDS}/latest/meta-data/iam/security-credentials/       X-aws-ec2-metadata-token: T
        -> the instance profile's role name R
    GET {node IMDS}/latest/meta-data/iam/security-credentials/R
        -> {"Code": "Success", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    [then, with `role_arn`: STS AssumeRole (RoleArn, RoleSessionName = user@run, Policy = the
     session policy), signed with SigV4 by botocore with the instance profile's credentials]

The node (an EC2 instance, an EKS node, a Batch compute environment) holds one instance
profile; the sidecar asks for its credentials only when the launch token grants a node-sourced
identity, and the job, which must not reach the node's IMDS itself, gets only that identity.

botocore signs AssumeRole (SigV4 is not worth re-implementing) and is imported here lazily, in
a thread, only when a granted identity names `role_arn`: the sidecar's own path imports no SDK.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp

from credsidecar.clouds.aws import STS_VERSION, AwsSettings, StsFailure, _failure, _xml
from credsidecar.clouds.contracts import AWS_NODE_IMDS_URL, AwsCredentials
from credsidecar.clouds.upstream_http import UpstreamResponse, request
from credsidecar.errors import (
    BadRequest,
    ConfigError,
    CredsidecarError,
    Forbidden,
    Unavailable,
    bounded,
)
from credsidecar.launch.grants import ROLE_ARN

__all__ = ["IMDS_CREDENTIALS_PATH", "NODE_IMDS_URL", "AwsNodeExchanger"]

NODE_IMDS_URL = AWS_NODE_IMDS_URL
IMDS_TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path
IMDS_CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
IMDS_TOKEN_TTL = "21600"  # noqa: S105 - seconds
_NS = {"sts": f"https://sts.amazonaws.com/doc/{STS_VERSION}/"}
_IMDS = "the node's IMDS"
_HINT = "is the sidecar on an EC2 node with IMDSv2, and --aws-node-imds-url right?"
_NO_BOTOCORE = (
    "assuming a role from the node's instance profile needs botocore to sign the request "
    "(SigV4); install it: pip install 'credsidecar[node]'"
)


@dataclass(frozen=True)
class _Signing:
    request: Any  # botocore.awsrequest.AWSRequest
    auth: Any  # botocore.auth.SigV4Auth
    credentials: Any  # botocore.credentials.Credentials


def _load_botocore() -> _Signing:
    try:
        awsrequest = importlib.import_module("botocore.awsrequest")
        auth = importlib.import_module("botocore.auth")
        credentials = importlib.import_module("botocore.credentials")
    except ImportError as exc:
        raise ConfigError(_NO_BOTOCORE) from exc
    return _Signing(awsrequest.AWSRequest, auth.SigV4Auth, credentials.Credentials)


class AwsNodeExchanger:
    def __init__(
        self,
        settings: AwsSettings,  # role_arn "" : the instance profile's own credentials
        session: aiohttp.ClientSession,
        who: str,
        imds_url: str = NODE_IMDS_URL,
        clock: Callable[[], float] = time.time,
        load_botocore: Callable[[], _Signing] = _load_botocore,
    ) -> None:
        if settings.role_arn and not ROLE_ARN.fullmatch(settings.role_arn):
            raise ConfigError(f"{settings.role_arn!r} is not an IAM role ARN")
        self.settings = settings
        self._session = session
        self._who = who
        self._imds_url = imds_url.rstrip("/")
        self._clock = clock
        self._load_botocore = load_botocore
        self._signing: _Signing | None = None
        endpoint = settings.sts_endpoint or f"https://sts.{settings.region}.amazonaws.com"
        self.endpoint = endpoint
        self._url = endpoint.rstrip("/") + "/"

    @property
    def _target(self) -> str:
        s = self.settings
        role = f"{s.role_arn} from the node's instance profile" if s.role_arn else (
            "the node's instance profile")  # fmt: skip
        return f"aws node identity {s.identity_name!r} ({role})"

    @property
    def description(self) -> str:
        return f"{self._who} as {self._target} via {_IMDS} at {self._imds_url}"

    async def fetch(self) -> AwsCredentials:
        profile = await self.instance_profile()
        if not self.settings.role_arn:
            return profile
        return await self._assume(profile)

    # the node's IMDS ---------------------------------------------------------------------------

    async def _imds(self, method: str, path: str, headers: dict[str, str]) -> UpstreamResponse:
        resp = await request(self._session, method, self._imds_url + path, _IMDS, headers=headers,
                             who=self._who, hint=_HINT)  # fmt: skip
        if resp.status != 200:
            said = f"{_IMDS} said (HTTP {resp.status} for {method} {path}): {bounded(resp.text)}"
            if resp.status >= 500 or resp.status == 429:
                raise Unavailable(f"{_IMDS} failed for {self._who} as {self._target}; "
                                  f"retrying. {said}")  # fmt: skip
            if resp.status == 404 and path.startswith(IMDS_CREDENTIALS_PATH):
                raise Forbidden(
                    f"{self._who} may not use {self._target}: the node has no instance profile "
                    f"(or not that role); attach one to the instance, or grant another "
                    f"identity. {said}"
                )
            raise Forbidden(f"{self._who} may not use {self._target}: {_IMDS} refused. {said}")
        return resp

    async def instance_profile(self) -> AwsCredentials:
        token = (
            await self._imds(
                "PUT", IMDS_TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL}
            )
        ).text
        headers = {"X-aws-ec2-metadata-token": token.strip()}
        names = (await self._imds("GET", IMDS_CREDENTIALS_PATH, headers)).text.split()
        if not names:
            raise Forbidden(f"{self._who} may not use {self._target}: the node has no "
                            "instance profile; attach one to the instance")  # fmt: skip
        role = names[0]
        resp = await self._imds("GET", IMDS_CREDENTIALS_PATH + role, headers)
        try:
            body = json.loads(resp.body)
            if body.get("Code", "Success") != "Success":
                raise Unavailable(f"{_IMDS} answered {self._who} Code {bounded(body['Code'])!r} "
                                  f"for {self._target}; retrying")  # fmt: skip
            expires_at = datetime.fromisoformat(body["Expiration"]).timestamp()
            return AwsCredentials(
                access_key_id=body["AccessKeyId"], secret_access_key=body["SecretAccessKey"],
                session_token=body["Token"], expires_at=expires_at,
                role_arn=f"instance-profile/{role}", assumed_role_arn=f"instance-profile/{role}",
                account_id="",
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise Unavailable(
                f"{_IMDS} answered {self._who} credentials of role {bounded(role, 64)!r} this "
                f"sidecar cannot read ({exc.__class__.__name__}); retrying"
            ) from None

    # AssumeRole, signed by botocore ------------------------------------------------------------

    async def _assume(self, profile: AwsCredentials) -> AwsCredentials:
        s = self.settings
        if self._signing is None:  # importing reads files: not on the event loop
            self._signing = await asyncio.to_thread(self._load_botocore)
        signing = self._signing
        form = {
            "Action": "AssumeRole",
            "Version": STS_VERSION,
            "RoleArn": s.role_arn,
            "RoleSessionName": s.session_name,
            "DurationSeconds": str(s.duration),
        }
        if s.session_policy:
            form["Policy"] = s.session_policy
        body = urlencode(form).encode()
        signed = signing.request(
            method="POST", url=self._url, data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )  # fmt: skip
        creds = signing.credentials(profile.access_key_id, profile.secret_access_key,
                                    profile.session_token)  # fmt: skip
        signing.auth(creds, "sts", s.region).add_auth(signed)
        headers = {k: str(v) for k, v in signed.headers.items()}
        resp = await request(self._session, "POST", self._url, "AWS STS", headers=headers,
                             raw=body, who=self._who, hint="retrying")  # fmt: skip
        if resp.status != 200:
            raise self._explain(_failure(resp))
        return self._credentials(resp)

    def _credentials(self, resp: UpstreamResponse) -> AwsCredentials:
        root = _xml(resp.body)
        result = root.find("sts:AssumeRoleResult", _NS) if root is not None else None
        creds = result.find("sts:Credentials", _NS) if result is not None else None

        def field(parent: Any, name: str) -> str:
            value = parent.findtext(f"sts:{name}", None, _NS) if parent is not None else None
            if not value:
                raise Unavailable(
                    f"AWS STS at {self.endpoint} answered {self._who} without {name}; retrying"
                )
            return str(value).strip()

        try:
            expires_at = datetime.fromisoformat(field(creds, "Expiration")).timestamp()
        except ValueError:
            raise Unavailable(f"AWS STS at {self.endpoint} answered an Expiration that is not "
                              "ISO 8601; retrying") from None  # fmt: skip
        user = result.find("sts:AssumedRoleUser", _NS) if result is not None else None
        assumed = user.findtext("sts:Arn", None, _NS) if user is not None else None
        role = self.settings.role_arn
        match = ROLE_ARN.fullmatch(role)
        return AwsCredentials(
            access_key_id=field(creds, "AccessKeyId"),
            secret_access_key=field(creds, "SecretAccessKey"),
            session_token=field(creds, "SessionToken"),
            expires_at=expires_at,
            role_arn=role,
            assumed_role_arn=assumed.strip() if assumed else role,
            account_id=match.group(1) if match else "",
        )

    def _explain(self, failure: StsFailure) -> CredsidecarError:
        code, message = bounded(failure.code, 64), bounded(failure.message)
        role = self.settings.role_arn
        head = f"{self._who} may not assume {role} from the node's instance profile " \
               f"(aws node identity {self.settings.identity_name!r})"  # fmt: skip
        said = f"STS said: {code}: {message}"
        if failure.status >= 500:
            return Unavailable(f"AWS STS failed for {self._who} as {role}; retrying. {said}")
        if code in ("Throttling", "ThrottlingException") or failure.status == 429:
            return Unavailable(f"AWS STS is throttling {self._who} for {role}; retrying later. "
                               f"{said}", retry_after=10)  # fmt: skip
        if code == "AccessDenied":
            return Forbidden(
                f"{head}: allow sts:AssumeRole on {role} to the instance profile's role, and "
                f"admit that role in {role}'s trust policy. {said}"
            )
        if code in ("ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"):
            return BadRequest(f"{head}: STS rejected the request ({code}); check the "
                              f"identity's session_policy in the policy. {said}")  # fmt: skip
        return Forbidden(f"{head}: {said}")
