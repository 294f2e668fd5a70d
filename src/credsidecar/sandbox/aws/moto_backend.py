"""moto in server mode with IAM enforcement on: real S3 permissions per assumed role.

moto has no switch for enforcement other than its "initial no-auth action count": the server
starts with enforcement off, the seed runs, then `POST /moto-api/reset-auth` with body 0 turns
it on for every later request. Its state is global to the process, so `stop()` restores it.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from credsidecar.sandbox.seed import ACCOUNT, BUCKETS, REFERENCE_BODY, REFERENCE_KEY, ROLES

__all__ = ["MotoBackend"]

REGION = "us-east-1"
_BOOTSTRAP = {"aws_access_key_id": "AKIASANDBOXBOOTSTRAP", "aws_secret_access_key": "bootstrap"}


def _role_policy(read_write: tuple[str, ...], read_only: tuple[str, ...]) -> dict[str, Any]:
    buckets = [f"arn:aws:s3:::{b}" for b in (*read_write, *read_only)]
    statements: list[dict[str, Any]] = [
        # Bucket-level actions are checked against the bucket ARN, object actions against keys.
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:HeadBucket"],
         "Resource": buckets},
    ]  # fmt: skip
    if read_write:
        statements.append(
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"arn:aws:s3:::{b}/*" for b in read_write]}
        )  # fmt: skip
    if read_only:
        statements.append(
            {"Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"arn:aws:s3:::{b}/*" for b in read_only]}
        )  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class MotoBackend:
    url: str
    admin: dict[str, str]
    _server: Any

    @classmethod
    def start(cls) -> MotoBackend:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        admin = cls._seed(url)
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            # Not form-encoded: Flask would swallow the body and moto would fail on float("").
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass
        return cls(url, admin, server)

    @staticmethod
    def _seed(url: str) -> dict[str, str]:
        iam = boto3.client("iam", endpoint_url=url, region_name=REGION, **_BOOTSTRAP)
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, **_BOOTSTRAP)
        iam.create_user(UserName="sandbox-admin")
        iam.put_user_policy(
            UserName="sandbox-admin",
            PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )  # fmt: skip
        key = iam.create_access_key(UserName="sandbox-admin")["AccessKey"]
        admin_arn = f"arn:aws:iam::{ACCOUNT}:user/sandbox-admin"
        # moto checks AssumeRole's principal literally: the trust policy names the admin user.
        # The web-identity trust (issuer, sub, aud) is checked by the STS stand-in before that.
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": admin_arn},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]}]}  # fmt: skip
        for role in ROLES:
            iam.create_role(
                RoleName=role.name,
                AssumeRolePolicyDocument=json.dumps(trust),
                MaxSessionDuration=43200,
            )
            iam.put_role_policy(
                RoleName=role.name,
                PolicyName="s3",
                PolicyDocument=json.dumps(_role_policy(role.read_write, role.read_only)),
            )
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="shared-refs", Key=REFERENCE_KEY, Body=REFERENCE_BODY)
        return {"aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"]}  # fmt: skip

    def admin_sts(self) -> Any:
        # Validation off: the sandbox allows lifetimes below STS's 900 s for renewal tests.
        return boto3.client(
            "sts",
            endpoint_url=self.url,
            region_name=REGION,
            config=Config(parameter_validation=False, retries={"max_attempts": 1}),
            **self.admin,
        )

    def stop(self) -> None:
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin
        from moto.moto_api._internal.models import moto_api_backend

        self._server.stop()
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
        ActionAuthenticatorMixin.request_count = 0
        moto_api_backend.reset()
