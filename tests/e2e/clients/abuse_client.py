"""Replays hostile input against a running sidecar or issuer and reports what came back.

Standard library only, so the same script runs as the job's user and as another Unix user
(`setpriv --reuid=65534`). It reads one JSON object on stdin:

    {"mode": "owner" | "outsider" | "issuer", "host": "127.0.0.1", "port": N, "seed": N,
     "max_requests": N, "max_seconds": S, "marker": "CANARY...", "secrets": {...}}

and prints one JSON object: counts per status, and `violations`, each a line saying which
input class produced which unexpected answer. The caller asserts there are none.

- owner: every class of malformed header, path, query and request line, with legitimate
  requests (canaries) in between that must keep succeeding. No 5xx but a 503 with
  Retry-After; proxied requests always 403.
- outsider: legitimate-looking requests with the job's own secrets; nothing may carry
  credentials back (only 400, 401, 403, 404, 405).
- issuer: malformed form and JSON bodies and keys at the issuer's API; no 5xx.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

# Bytes that may appear in a response only when credentials were handed out.
CREDENTIAL_MARKERS = (b"AccessKeyId", b"access_token", b"SecretAccessKey")
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
GCP_TOKEN = "/computeMetadata/v1/instance/service-accounts/default/token"
GCP_IDENTITY = "/computeMetadata/v1/instance/service-accounts/default/identity"
AZURE_IMDS = "/metadata/identity/oauth2/token"
AZURE_APP = "/msi/token"
CONTAINER = "/v1/credentials/aws"


class Target:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.hostport = f"{host}:{port}"

    def send(self, raw: bytes, timeout: float = 10.0) -> tuple[int | None, dict[str, str], bytes]:
        """One request on its own connection; (None, {}, b"") when the server just closed."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(raw)
            chunks = []
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
        data = b"".join(chunks)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return None, {}, data
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        return status, headers, body

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str | bytes] | None = None,
        body: bytes = b"",
        host: str | None = None,
    ) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1".encode("latin-1", "replace"),
            f"Host: {host or self.hostport}".encode(),
        ]
        for name, value in (headers or {}).items():
            raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
            lines.append(name.encode() + b": " + raw)
        if body:
            lines.append(f"Content-Length: {len(body)}".encode())
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _junk_text(rng: random.Random) -> str:
    pools = [
        "²³¹⁴٣০๓",  # digits str.isdigit() accepts but int() may not
        "0123456789",
        "abcdefXYZ-._~",
        "ünïcødé ☃ \U0001d518",  # the last is a non-BMP letter
        "\t ;,=/\\\"'",
    ]
    pool = rng.choice(pools)
    return "".join(rng.choice(pool) for _ in range(rng.choice([1, 2, 8, 64, 300])))


def _junk_bytes(rng: random.Random, marker: str) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 40)))  # not UTF-8
    if choice == 1:
        return b"9" * rng.choice([7, 100, 5000])
    if choice == 2:
        return marker.encode() + bytes([rng.randrange(0x80, 0x100)])
    if choice == 3:
        return _junk_text(rng).encode("utf-8")
    if choice == 4:
        return b"forged." + str(rng.randrange(10**15)).encode() + b".x"
    return ("A" * rng.choice([199, 200, 201, 4000])).encode()


class Fuzzer:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.rng = random.Random(config["seed"])  # noqa: S311 - reproducible input, not crypto
        self.target = Target(config["host"], config["port"])
        self.marker: str = config["marker"]
        self.secrets: dict[str, str] = config.get("secrets", {})
        self.statuses: Counter[str] = Counter()
        self.violations: list[str] = []

    def violation(self, what: str) -> None:
        if what not in self.violations and len(self.violations) < 50:
            self.violations.append(what)

    def exchange(self, label: str, raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
        status, headers, body = self.target.send(raw)
        self.statuses[str(status)] += 1
        return status, headers, body

    # owner ------------------------------------------------------------------------------------

    def imds_token(self) -> str | None:
        status, _, body = self.exchange(
            "imds token", self.target.request("PUT", "/latest/api/token", {TTL: "60"})
        )
        return body.decode() if status == 200 else None

    def canaries(self) -> None:
        """Legitimate requests that must keep working whatever came before."""
        s = self.secrets
        checks: list[tuple[str, bytes]] = []
        if "aws_container" in s:
            checks.append(
                (
                    "aws container",
                    self.target.request("GET", CONTAINER, {"Authorization": s["aws_container"]}),
                )
            )
            token = self.imds_token()
            if token is None:
                self.violation("canary: IMDSv2 PUT /latest/api/token failed")
            else:
                checks.append(
                    (
                        "aws imds",
                        self.target.request(
                            "GET", ROLE_PATH + s["aws_role"], {"X-aws-ec2-metadata-token": token}
                        ),
                    )
                )
        if s.get("gcp"):
            checks.append(
                ("gcp token", self.target.request("GET", GCP_TOKEN, {"Metadata-Flavor": "Google"}))
            )
        if "azure_header" in s:
            query = "?api-version=2019-08-01&resource=https://management.azure.com/"
            checks.append(
                (
                    "azure app service",
                    self.target.request(
                        "GET", AZURE_APP + query, {"X-IDENTITY-HEADER": s["azure_header"]}
                    ),
                )
            )
        for label, raw in checks:
            status, _, _ = self.exchange(label, raw)
            if status != 200:
                self.violation(f"canary {label}: answered {status}, expected 200")

    def owner_cases(self) -> list[Callable[[], tuple[str, bytes, set[int] | None]]]:
        """Each returns (class, request bytes, statuses required or None for 'any non-5xx')."""
        rng, t = self.rng, self.target
        s = self.secrets
        role = s.get("aws_role", "role")

        def ttl() -> tuple[str, bytes, set[int] | None]:
            return (
                "imds ttl header",
                t.request("PUT", "/latest/api/token", {TTL: _junk_bytes(rng, self.marker)}),
                {200, 400},  # 200 only when the junk happens to be a valid TTL such as "7"
            )

        def imds_session() -> tuple[str, bytes, set[int] | None]:
            raw = _junk_bytes(rng, self.marker)
            return (
                "imds session token",
                t.request("GET", ROLE_PATH + role, {"X-aws-ec2-metadata-token": raw}),
                {401},
            )

        def container_auth() -> tuple[str, bytes, set[int] | None]:
            raw = _junk_bytes(rng, self.marker)
            return (
                "container Authorization",
                t.request("GET", CONTAINER, {"Authorization": raw}),
                {401},
            )

        def identity_header() -> tuple[str, bytes, set[int] | None]:
            raw = _junk_bytes(rng, self.marker)
            path = AZURE_APP + "?api-version=2019-08-01&resource=https://storage.azure.com"
            return "X-IDENTITY-HEADER", t.request("GET", path, {"X-IDENTITY-HEADER": raw}), {401}

        def paths() -> tuple[str, bytes, set[int] | None]:
            seg = "".join(rng.choice("abc%0d%0a/._~") for _ in range(rng.choice([3, 30, 600])))
            base = rng.choice(["/computeMetadata/v1/", "/latest/meta-data/", "/", "/metadata/"])
            return "paths", t.request("GET", base + seg, {"Metadata-Flavor": "Google"}), None

        def gcp_redirect() -> tuple[str, bytes, set[int] | None]:
            path = "/computeMetadata/v1/instance?x=%0d%0aSet-Cookie:%20a" + str(rng.randrange(99))
            return (
                "gcp redirect query",
                t.request("GET", path, {"Metadata-Flavor": "Google"}),
                {301},
            )

        def gcp_query() -> tuple[str, bytes, set[int] | None]:
            if rng.random() < 0.5:
                scopes = ",".join(
                    f"https://www.googleapis.com/auth/s{rng.randrange(10**6)}"
                    for _ in range(rng.choice([1, 3]))
                )
                path = f"{GCP_TOKEN}?scopes={scopes}"
            else:
                audience = (
                    "https://aud.example/"
                    + "x" * rng.choice([1, 50, 3000])
                    + str(rng.randrange(10**6))
                )
                path = f"{GCP_IDENTITY}?audience={audience}"
            return (
                "gcp scopes/audiences",
                t.request("GET", path, {"Metadata-Flavor": "Google"}),
                None,
            )

        def azure_query() -> tuple[str, bytes, set[int] | None]:
            resource = rng.choice(
                [
                    "https://storage.azure.com",
                    "https://storage.azure.com/",
                    "HTTPS://STORAGE.AZURE.COM//",
                    f"https://r{rng.randrange(10**6)}.example/" + "y" * rng.choice([1, 900]),
                ]
            )
            path = f"{AZURE_IMDS}?api-version=2018-02-01&resource={resource}"
            if rng.random() < 0.3:
                path += f"&client_id={_junk_text(rng)[:40]}"
            return "azure resources", t.request("GET", path, {"Metadata": "true"}), None

        def proxied() -> tuple[str, bytes, set[int] | None]:
            header = rng.choice(
                ["X-Forwarded-For", "Forwarded", "Via", "X-Forwarded-Host", "X-Real-IP"]
            )
            return (
                "proxy headers",
                t.request("PUT", "/latest/api/token", {TTL: "60", header: "1.2.3.4"}),
                {403},
            )

        def browser() -> tuple[str, bytes, set[int] | None]:
            header = rng.choice(["Origin", "Referer", "Sec-Fetch-Site"])
            return (
                "browser headers",
                t.request(
                    "GET", GCP_TOKEN, {"Metadata-Flavor": "Google", header: "http://evil.example"}
                ),
                {403},
            )

        def bad_host() -> tuple[str, bytes, set[int] | None]:
            host = rng.choice(
                ["evil.example", f"127.0.0.1:{t.port + 1}", "169.254.169.254", _junk_text(rng)[:60]]
            )
            return (
                "Host header",
                t.request("PUT", "/latest/api/token", {TTL: "60"}, host=host),
                None,
            )

        def malformed() -> tuple[str, bytes, set[int] | None]:
            marker = self.marker.encode()
            raw = rng.choice(
                [
                    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: " + marker + b"\x00\r\n\r\n",
                    b"\x16\x03\x01\x02\x00" + marker + b"\r\n\r\n",  # a TLS hello on the plain port
                    b"G\x00T /latest/api/token HTTP/1.1\r\nX: " + marker + b"\r\n\r\n",
                    b"GET /" + marker + b" HTTP/9.9\r\n\r\n",
                    b"PUT /latest/api/token HTTP/1.1\r\nNoColonHere " + marker + b"\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                    b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",
                ]
            )
            return "malformed request", raw, None

        return [
            ttl,
            imds_session,
            container_auth,
            identity_header,
            paths,
            gcp_redirect,
            gcp_query,
            azure_query,
            proxied,
            browser,
            bad_host,
            malformed,
        ]

    def run_owner(self) -> None:
        cases = self.owner_cases()
        available = [c for c in cases if self._applies(c.__name__)]
        self.canaries()
        deadline = time.monotonic() + self.config["max_seconds"]
        for n in range(self.config["max_requests"]):
            if time.monotonic() > deadline:
                break
            label, raw, allowed = self.rng.choice(available)()
            status, headers, _ = self.exchange(label, raw)
            if status is not None and status >= 500:
                if status != 503 or "retry-after" not in headers:
                    self.violation(
                        f"{label}: answered {status} (a 5xx other than 503 + Retry-After)"
                    )
            elif allowed is not None and status not in allowed:
                self.violation(f"{label}: answered {status}, expected one of {sorted(allowed)}")
            if n % 50 == 49:
                self.canaries()
        self.canaries()

    def _applies(self, case: str) -> bool:
        s = self.secrets
        needs = {
            "ttl": "aws_role",
            "imds_session": "aws_role",
            "container_auth": "aws_container",
            "proxied": "aws_role",
            "bad_host": "aws_role",
            "gcp_redirect": "gcp",
            "gcp_query": "gcp",
            "browser": "gcp",
            "identity_header": "azure_header",
            "azure_query": "azure_header",
        }
        return case not in needs or bool(s.get(needs[case]))

    # outsider ---------------------------------------------------------------------------------

    def run_outsider(self) -> None:
        s, t = self.secrets, self.target
        requests: list[tuple[str, bytes]] = [
            ("imds token", t.request("PUT", "/latest/api/token", {TTL: "60"})),
            ("healthz", t.request("GET", "/readyz")),
        ]
        if "aws_container" in s:
            requests.append(
                (
                    "aws container",
                    t.request("GET", CONTAINER, {"Authorization": s["aws_container"]}),
                )
            )
            requests.append(
                ("aws role list", t.request("GET", ROLE_PATH, {"X-aws-ec2-metadata-token": "x"}))
            )
        if s.get("gcp"):
            requests.append(
                ("gcp token", t.request("GET", GCP_TOKEN, {"Metadata-Flavor": "Google"}))
            )
            requests.append(
                (
                    "gcp identity",
                    t.request("GET", GCP_IDENTITY + "?audience=a", {"Metadata-Flavor": "Google"}),
                )
            )
        if "azure_header" in s:
            query = "?api-version=2019-08-01&resource=https://storage.azure.com"
            requests.append(
                (
                    "azure app service",
                    t.request("GET", AZURE_APP + query, {"X-IDENTITY-HEADER": s["azure_header"]}),
                )
            )
            requests.append(
                (
                    "azure imds",
                    t.request(
                        "GET",
                        AZURE_IMDS + query.replace("2019-08-01", "2018-02-01"),
                        {"Metadata": "true"},
                    ),
                )
            )
        deadline = time.monotonic() + self.config["max_seconds"]
        for n in range(self.config["max_requests"]):
            if time.monotonic() > deadline:
                break
            label, raw = requests[n % len(requests)]
            status, _, body = self.exchange(label, raw)
            if any(m in body for m in CREDENTIAL_MARKERS) or (
                s.get("aws_container") or "\0"
            ) in body.decode("latin-1"):
                self.violation(f"outsider {label}: response carried credentials")
            if status not in (None, 400, 401, 403, 404, 405):
                self.violation(f"outsider {label}: answered {status}")

    # issuer -----------------------------------------------------------------------------------

    def run_issuer(self) -> None:
        rng, t, marker = self.rng, self.target, self.marker
        exchange_type = "urn:ietf:params:oauth:grant-type:token-exchange"
        huge = "a" * 60000

        def form(body: bytes, charset: str = "") -> bytes:
            ctype = "application/x-www-form-urlencoded" + (
                f"; charset={charset}" if charset else ""
            )
            return t.request("POST", "/v1/token", {"Content-Type": ctype}, body)

        def mint(body: bytes, key: str | bytes = "") -> bytes:
            headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
            headers["Authorization"] = key if isinstance(key, bytes) else f"Bearer {key or marker}"
            return t.request("POST", "/v1/launch-tokens", headers, body)

        cases: list[Callable[[], tuple[str, bytes]]] = [
            lambda: (
                "form with invalid UTF-8",
                form(b"grant_type=" + bytes([0xFF, 0xFE]) + b"&audience=\xc3"),
            ),
            lambda: (
                "form with an unknown charset",
                form(b"grant_type=x", rng.choice(["klingon", "utf-7", "x" * 300])),
            ),
            lambda: (
                "form with a huge audience",
                form(f"grant_type={exchange_type}&subject_token={marker}&audience={huge}".encode()),
            ),
            lambda: (
                "form with a forged token",
                form(
                    f"grant_type={exchange_type}&subject_token=eyJ{marker}.e30.x&audience=sts.amazonaws.com".encode()
                ),
            ),
            lambda: ("deeply nested JSON", mint(b"[" * 30000 + b"]" * 30000)),
            lambda: (
                "a 5,000-digit integer",
                mint(b'{"user": "alice", "run": "r", "lifetime": ' + b"9" * 5000 + b"}"),
            ),
            lambda: (
                "non-ASCII bearer key",
                mint(b"{}", b"Bearer " + bytes([0xE2, 0x98, 0x83]) + marker.encode()),
            ),
            lambda: ("JSON with invalid UTF-8", mint(b'{"user": "\xff\xfe"}')),
            lambda: (
                "random JSON",
                mint(json.dumps({_junk_text(rng)[:30]: _junk_text(rng)[:300]}).encode()),
            ),
            lambda: (
                "random path",
                t.request("GET", "/v1/" + _junk_text(rng)[:200].replace(" ", "%20")),
            ),
        ]
        deadline = time.monotonic() + self.config["max_seconds"]
        for _ in range(self.config["max_requests"]):
            if time.monotonic() > deadline:
                break
            label, raw = rng.choice(cases)()
            status, headers, _ = self.exchange(label, raw)
            if (
                status is not None
                and status >= 500
                and not (status == 503 and "retry-after" in headers)
            ):
                self.violation(f"issuer {label}: answered {status}")


def main() -> int:
    config = json.load(sys.stdin)
    fuzzer = Fuzzer(config)
    {"owner": fuzzer.run_owner, "outsider": fuzzer.run_outsider, "issuer": fuzzer.run_issuer}[
        config["mode"]
    ]()
    json.dump({"statuses": dict(fuzzer.statuses), "violations": fuzzer.violations}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
