"""Which checks the job's environment configures, run in order against one overall deadline.

Only the clouds whose variables are set are checked; every other one is reported "not
configured". Each check is independent (it gets its own IMDSv2 session, reads its own email), so
one broken contract fails the rows that rely on it and no others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from credsidecar.smoke import aws, azure, gcp
from credsidecar.smoke.client import Client
from credsidecar.smoke.model import Found, Result, Skip, Status, Violation

__all__ = ["DEFAULT_AUDIENCE", "DEFAULT_AZURE_RESOURCE", "DEFAULT_TIMEOUT", "Options", "Report",
           "run_smoke"]  # fmt: skip

Check = Callable[[Mapping[str, str], Client, Callable[[], float]], Found]
Plan = list[tuple[str, Check | str]]  # a check, or why it is not configured

# A startup probe's timeoutSeconds is a few seconds too; everything is on loopback, and only the
# first ID token of a run reaches upstream.
DEFAULT_TIMEOUT = 5.0
DEFAULT_AUDIENCE = "https://credsidecar.invalid/smoke"
# The resource the sidecar holds a token for from its start (its readiness check), so the Azure
# checks cost no upstream call.
DEFAULT_AZURE_RESOURCE = "https://management.azure.com/"


@dataclass(frozen=True)
class Options:
    timeout: float = DEFAULT_TIMEOUT
    audience: str = DEFAULT_AUDIENCE
    azure_resource: str = DEFAULT_AZURE_RESOURCE


@dataclass(frozen=True)
class Report:
    results: tuple[Result, ...]
    seconds: float

    @property
    def configured(self) -> bool:
        return any(r.status is not Status.NOT_CONFIGURED for r in self.results)

    @property
    def ok(self) -> bool:
        return self.configured and not any(r.failed for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 all checks passed, 1 a contract violation, 2 nothing to check."""
        if not self.configured:
            return 2
        return 0 if self.ok else 1


def _overrides(names: tuple[str, ...], cloud: str) -> Check:
    def check(env: Mapping[str, str], client: Client, now: Callable[[], float]) -> Found:
        found = [name for name in names if env.get(name)]
        if found:
            raise Violation(
                f"{', '.join(found)} {'is' if len(found) == 1 else 'are'} set: "
                f"{'it wins' if len(found) == 1 else 'they win'} over the sidecar in the {cloud} "
                "SDKs' credential chains; unset (`credsidecar env` prints the unset lines)"
            )
        return Found(note="no variable that wins over the sidecar")

    return check


def _plan_aws(env: Mapping[str, str]) -> Plan:
    container, imds = env.get(aws.CONTAINER_VARIABLE), env.get(aws.IMDS_VARIABLE)
    if not container and not imds:
        return [("aws", f"no {aws.CONTAINER_VARIABLE} or {aws.IMDS_VARIABLE}")]
    plan: Plan = [("aws.environment", _overrides(aws.ENVIRONMENT_OVERRIDES, "AWS"))]
    plan.append(
        ("aws.container", aws.container if container else f"{aws.CONTAINER_VARIABLE} unset")
    )
    if imds:
        plan += [("aws.imds.token", aws.imds_token),
                 ("aws.imds.session", aws.imds_session_required),
                 ("aws.imds.role", aws.imds_role),
                 ("aws.imds.extended", aws.imds_extended)]  # fmt: skip
    else:
        plan.append(("aws.imds", f"{aws.IMDS_VARIABLE} unset"))
    return plan


def _plan_gcp(env: Mapping[str, str], options: Options) -> Plan:
    metadata = env.get(gcp.HOST_VARIABLE) or env.get(gcp.IP_VARIABLE)
    external = bool(env.get(gcp.CREDENTIALS_VARIABLE)) and gcp.uses_external_account(env)
    if not metadata and not external:
        return [("gcp", f"no {gcp.HOST_VARIABLE}, {gcp.IP_VARIABLE} or external-account "
                        f"{gcp.CREDENTIALS_VARIABLE}")]  # fmt: skip
    names = gcp.METADATA_OVERRIDES if metadata else gcp.ENVIRONMENT_OVERRIDES
    plan: Plan = [("gcp.environment", _overrides(names, "Google"))]
    if metadata:
        plan += [("gcp.ping", gcp.ping), ("gcp.flavor", gcp.flavor_required),
                 ("gcp.token", gcp.token), ("gcp.account", gcp.account),
                 ("gcp.project", gcp.project),
                 ("gcp.id_token", partial(gcp.id_token, audience=options.audience))]  # fmt: skip
    else:
        plan.append(("gcp.metadata", f"{gcp.HOST_VARIABLE} and {gcp.IP_VARIABLE} unset"))
    if env.get(gcp.CREDENTIALS_VARIABLE):
        # In metadata mode too: a key file there would win over the metadata server.
        plan.append(("gcp.external_account", gcp.external_account))
    return plan


def _plan_azure(env: Mapping[str, str], options: Options) -> Plan:
    app_service, imds = env.get(azure.APP_SERVICE_VARIABLE), env.get(azure.IMDS_VARIABLE)
    if not app_service and not imds:
        return [("azure", f"no {azure.APP_SERVICE_VARIABLE} or {azure.IMDS_VARIABLE}")]
    resource = options.azure_resource
    plan: Plan = [("azure.environment", _overrides(azure.ENVIRONMENT_OVERRIDES, "Azure"))]
    plan.append(
        ("azure.app_service", partial(azure.app_service, resource=resource))
        if app_service
        else ("azure.app_service", f"{azure.APP_SERVICE_VARIABLE} unset")
    )
    plan.append(("azure.imds", partial(azure.imds, resource=resource))
                if imds else ("azure.imds", f"{azure.IMDS_VARIABLE} unset"))  # fmt: skip
    return plan


def _run(name: str, check: Check, env: Mapping[str, str], client: Client,
         wall: Callable[[], float], perf: Callable[[], float]) -> Result:  # fmt: skip
    started = perf()
    try:
        found = check(env, client, wall)
    except Violation as exc:
        status, detail, found = Status.FAIL, exc.message, Found()
    except Skip as exc:
        status, detail, found = Status.SKIPPED, exc.reason, Found()
    else:
        status, detail = Status.OK, found.note
    latency = round((perf() - started) * 1000, 1)
    return Result(name, status, detail, found.identity, found.remaining, latency)


def run_smoke(
    env: Mapping[str, str],
    options: Options = Options(),
    wall: Callable[[], float] = time.time,
    mono: Callable[[], float] = time.monotonic,
    perf: Callable[[], float] = time.perf_counter,
) -> Report:
    started = perf()
    client = Client(options.timeout, mono)
    plan = [*_plan_aws(env), *_plan_gcp(env, options), *_plan_azure(env, options)]
    results = []
    for name, check in plan:
        if isinstance(check, str):
            results.append(Result(name, Status.NOT_CONFIGURED, check))
        else:
            results.append(_run(name, check, env, client, wall, perf))
    return Report(tuple(results), perf() - started)
