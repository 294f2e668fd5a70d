"""Each smoke check against a small fake server: OK when the contract holds, and, per broken
contract, a failure of exactly the check that relies on it, naming the violation."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from credsidecar.smoke.model import Status
from credsidecar.smoke.report import render_json, render_table
from credsidecar.smoke.runner import Options, Report, run_smoke
from tests.smoke.fake_sidecar import EMAIL, ROLE, SECRETS, FakeSidecar, ServerFactory

ALL_CHECKS = {
    "aws.environment", "aws.container", "aws.imds.token", "aws.imds.session", "aws.imds.role",
    "aws.imds.extended", "gcp.environment", "gcp.ping", "gcp.flavor", "gcp.token",
    "gcp.account", "gcp.project", "gcp.id_token", "azure.environment", "azure.app_service",
    "azure.imds",
}  # fmt: skip


async def smoke_against(
    fake: FakeSidecar, aiohttp_server: ServerFactory, tmp_path: Path,
    env_change: Callable[[dict[str, str]], None] | None = None, limit: float = 10.0,
) -> Report:  # fmt: skip
    server = await aiohttp_server(fake.app())
    env = fake.env(str(server.make_url("")).rstrip("/"), tmp_path)
    if env_change:
        env_change(env)
    # smoke is synchronous (http.client): off the event loop that serves the fake.
    return await asyncio.to_thread(run_smoke, env, Options(timeout=limit))


def by_check(report: Report) -> dict[str, tuple[Status, str]]:
    return {r.check: (r.status, r.detail) for r in report.results}


async def test_every_check_passes_against_a_correct_sidecar(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path)
    assert {c: s for c, (s, _) in by_check(report).items()} == dict.fromkeys(ALL_CHECKS, Status.OK)
    assert report.exit_code == 0
    found = {r.check: r for r in report.results}
    assert found["aws.container"].identity == "key ASIAFAKE..., account 123456789012"
    assert found["aws.imds.role"].identity == f"role {ROLE}, key ASIAFAKE..."
    assert found["gcp.account"].identity == EMAIL
    assert found["azure.app_service"].identity is not None
    assert "client 00000000-0000-4000-8000-0000000000a2" in found["azure.app_service"].identity
    remaining = found["aws.container"].remaining
    assert remaining is not None and 3000 < remaining <= 3600
    assert all(r.latency_ms is not None for r in report.results)


async def test_the_report_never_shows_a_secret_or_token(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path)
    for text in (render_table(report), render_json(report)):
        for secret in SECRETS:
            assert secret not in text
        assert "eyJ" not in text  # no JWT (ID token, access token) either


# (fault, {check that must fail: words its violation must contain})
BROKEN = [
    ("imds_ttl_not_echoed", {"aws.imds.token": "did not echo X-aws-ec2-metadata-token-ttl"}),
    ("imds_role_trailing_newline", {"aws.imds.role": "trailing whitespace",
                                    "aws.imds.extended": "trailing whitespace"}),
    ("imds_no_session_needed", {"aws.imds.session": "answered 200, not 401"}),
    ("imds_code_not_success", {"aws.imds.role": "Code is 'Failure'",
                               "aws.imds.extended": "Code is 'Failure'"}),
    ("imds_no_extended", {"aws.imds.extended": "answered 404, not 200"}),
    ("aws_no_content_type", {"aws.container": "not 'application/json'",
                             "aws.imds.role": "not 'application/json'",
                             "aws.imds.extended": "not 'application/json'"}),
    ("aws_expiration:expired", {"aws.container": "is in the past",
                                "aws.imds.role": "is in the past",
                                "aws.imds.extended": "is in the past"}),
    ("aws_expiration:near_expiry", {"aws.container": "more than 20 minutes",
                                    "aws.imds.role": "more than 20 minutes",
                                    "aws.imds.extended": "more than 20 minutes"}),
    ("aws_expiration_offset_form", {"aws.container": "is not YYYY-MM-DDTHH:MM:SSZ",
                                    "aws.imds.role": "is not YYYY-MM-DDTHH:MM:SSZ",
                                    "aws.imds.extended": "is not YYYY-MM-DDTHH:MM:SSZ"}),
    ("aws_no_token_field", {"aws.container": "has no Token", "aws.imds.role": "has no Token",
                            "aws.imds.extended": "has no Token"}),
    ("aws_secret_not_enforced", {"aws.container": "200 without Authorization"}),
    ("gcp_flavor_not_checked", {"gcp.flavor": "answered 200, not 403"}),
    ("gcp_no_response_flavor", {c: "without the response header Metadata-Flavor: Google"
                                for c in ("gcp.ping", "gcp.flavor", "gcp.token", "gcp.account",
                                          "gcp.project", "gcp.id_token")}),
    ("gcp_expires_in_string", {"gcp.token": "is not an integer"}),
    ("gcp_token_type_lowercase", {"gcp.token": "token_type is 'bearer', not 'Bearer'"}),
    ("gcp_id_token_wrong_aud", {"gcp.id_token": "aud is 'https://someone-else.example'"}),
    ("azure_no_expires_on", {"azure.app_service": "expires_on is None",
                             "azure.imds": "expires_on is None"}),
    ("azure_expires_on_number", {"azure.app_service": "not epoch seconds as a string",
                                 "azure.imds": "not epoch seconds as a string"}),
    ("azure_no_tid", {"azure.app_service": "no tid claim", "azure.imds": "no tid claim"}),
    ("azure_header_not_enforced", {"azure.app_service": "200 without X-IDENTITY-HEADER"}),
    ("azure_imds_probe_unanswered", {"azure.imds": "answered 404, not 400"}),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "expected"), BROKEN, ids=[f for f, _ in BROKEN])
async def test_a_broken_contract_fails_the_checks_relying_on_it_and_names_it(
    fault: str, expected: dict[str, str], aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    report = await smoke_against(FakeSidecar({fault}), aiohttp_server, tmp_path)
    results = by_check(report)
    failed = {check for check, (status, _) in results.items() if status is Status.FAIL}
    assert failed == set(expected), {c: results[c][1] for c in failed}
    for check, words in expected.items():
        assert words in results[check][1], results[check][1]
    assert report.exit_code == 1
    for text in (render_table(report), render_json(report)):
        assert not [secret for secret in SECRETS if secret in text]


async def test_a_token_file_ending_in_a_newline_is_a_violation(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def add_newline(env: dict[str, str]) -> None:
        path = Path(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
        path.write_text(path.read_text() + "\n")

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, add_newline)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert "ends with a newline" in detail


async def test_a_secret_that_cannot_be_sent_is_reported_without_quoting_it(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def line_break(env: dict[str, str]) -> None:
        del env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "top-secret\r\nX-Injected: 1"

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, line_break)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert "cannot be sent" in detail
    assert "top-secret" not in detail


async def test_a_token_variable_that_differs_from_the_file_is_a_violation(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def other(env: dict[str, str]) -> None:
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "something-else"

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, other)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert "hold different secrets" in detail
    assert "something-else" not in detail


async def test_a_static_key_left_in_the_environment_fails_that_clouds_environment_check(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def keep_keys(env: dict[str, str]) -> None:
        env["AWS_PROFILE"] = "admin"
        env["AZURE_CLIENT_SECRET"] = "hunter2"
        env["NO_GCE_CHECK"] = "True"  # turns the metadata server off in google-auth

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, keep_keys)
    results = by_check(report)
    failed = {c for c, (s, _) in results.items() if s is Status.FAIL}
    assert failed == {"aws.environment", "gcp.environment", "azure.environment"}
    assert "AWS_PROFILE is set" in results["aws.environment"][1]
    assert "hunter2" not in results["azure.environment"][1]


async def test_a_container_uri_that_is_not_loopback_is_refused_before_sending_the_secret(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def remote(env: dict[str, str]) -> None:
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://192.0.2.1/v1/credentials/aws"

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, remote)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert "only to a loopback address" in detail


async def test_clouds_without_variables_are_not_configured_and_do_not_fail(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def aws_only(env: dict[str, str]) -> None:
        for name in (
            "GCE_METADATA_HOST",
            "GCE_METADATA_IP",
            "IDENTITY_ENDPOINT",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        ):
            del env[name]  # fmt: skip

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, aws_only)
    results = by_check(report)
    assert results["gcp"][0] is Status.NOT_CONFIGURED
    assert results["azure"][0] is Status.NOT_CONFIGURED
    assert results["aws.imds"] == (Status.NOT_CONFIGURED,
                                   "AWS_EC2_METADATA_SERVICE_ENDPOINT unset")  # fmt: skip
    assert results["aws.container"][0] is Status.OK
    assert report.exit_code == 0


async def test_the_secret_only_external_account_file_is_followed_to_its_subject_token(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def secret_only(env: dict[str, str]) -> None:
        for name in (
            "GCE_METADATA_HOST",
            "GCE_METADATA_IP",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        ):
            del env[name]  # fmt: skip
        document = {
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools"
                        "/p/providers/credsidecar",
            "credential_source": {
                "url": f"{env['CREDSIDECAR_URL']}/subject-token",
                "headers": {"Authorization": env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
                "format": {"type": "json", "subject_token_field_name": "subject_token"},
            },
            "service_account_impersonation_url": "https://iam.example/v1/projects/-/"
                f"serviceAccounts/{EMAIL}:generateAccessToken",
        }  # fmt: skip
        path = tmp_path / "gcp-external-account.json"
        path.write_text(json.dumps(document))
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(path)

        env["NO_GCE_CHECK"] = "True"  # as --secret-only exports it

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, secret_only)
    results = {r.check: r for r in report.results}
    assert results["gcp.environment"].status is Status.OK
    assert results["gcp.metadata"].status is Status.NOT_CONFIGURED
    external = results["gcp.external_account"]
    assert external.status is Status.OK, external.detail
    assert external.identity == f"{EMAIL} (subject alice)"
    assert report.exit_code == 0


async def test_a_key_file_beside_the_metadata_server_is_a_violation(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def key_file(env: dict[str, str]) -> None:
        path = tmp_path / "key.json"
        path.write_text(json.dumps({"type": "service_account", "private_key": "k"}))
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(path)

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, key_file)
    status, detail = by_check(report)["gcp.external_account"]
    assert status is Status.FAIL
    assert "win over the sidecar" in detail


async def test_id_tokens_are_skipped_for_a_directly_federated_identity(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    fake = FakeSidecar()
    fake.account_email = "alice-gcs@federated.invalid"
    report = await smoke_against(fake, aiohttp_server, tmp_path)
    status, detail = by_check(report)["gcp.id_token"]
    assert status is Status.SKIPPED
    assert "need a service account" in detail
    assert report.exit_code == 0


async def test_only_one_of_the_gcp_metadata_variables_is_a_violation(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    def host_only(env: dict[str, str]) -> None:
        del env["GCE_METADATA_IP"]

    report = await smoke_against(FakeSidecar(), aiohttp_server, tmp_path, host_only)
    status, detail = by_check(report)["gcp.ping"]
    assert status is Status.FAIL
    assert detail.startswith("GCE_METADATA_IP is unset while GCE_METADATA_HOST is set")


def test_a_sidecar_that_is_not_running_is_named_with_the_way_out() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{port}/v1/credentials/aws",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "x"}  # fmt: skip
    report = run_smoke(env)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert detail == (
        f"GET http://127.0.0.1:{port}/v1/credentials/aws: no answer (Connection refused); "
        "is the sidecar running?"
    )


def test_nothing_configured_exits_2() -> None:
    report = run_smoke({"PATH": "/usr/bin"})
    assert report.exit_code == 2
    assert {r.status for r in report.results} == {Status.NOT_CONFIGURED}


async def test_an_endpoint_that_never_answers_is_bounded_by_the_overall_timeout(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    fake = FakeSidecar()
    fake.hang = True
    try:
        report = await smoke_against(fake, aiohttp_server, tmp_path, limit=0.2)
    finally:
        fake.release.set()
    results = by_check(report)
    assert results["aws.container"][0] is Status.FAIL
    # Once the deadline has passed, the remaining checks fail at once, saying so.
    last = results["azure.imds"]
    assert last[0] is Status.FAIL
    assert "the overall --timeout of 0.2 s ran out before GET" in last[1]
    assert report.exit_code == 1


def test_checks_after_the_deadline_fail_without_calling_anything() -> None:
    """The deadline is on the injected monotonic clock: past it, no request is even made."""
    now = [0.0]
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/v1/credentials/aws",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": "x"}  # fmt: skip

    def mono() -> float:
        now[0] += 10.0  # every look at the clock is 10 s later
        return now[0]

    report = run_smoke(env, Options(timeout=5.0), mono=mono)
    status, detail = by_check(report)["aws.container"]
    assert status is Status.FAIL
    assert detail == (
        "the overall --timeout of 5 s ran out before GET http://127.0.0.1:9/v1/credentials/aws"
    )


def test_json_report_carries_every_field() -> None:
    report = run_smoke({})
    body = json.loads(render_json(report))
    assert body["ok"] is False
    assert body["exit_code"] == 2
    assert body["checks"][0] == {"check": "aws", "result": "not configured",
                                 "detail": body["checks"][0]["detail"], "identity": None,
                                 "remaining_seconds": None, "latency_ms": None}  # fmt: skip
