"""What the cloud checks share: marker names and detail text safe to show."""

from __future__ import annotations

from credsidecar.preflight.probe import MARKER_DIR, MAX_DETAIL, clean_detail, marker_name


def test_a_marker_is_a_fresh_name_under_the_prefix_however_the_prefix_ends() -> None:
    for prefix, start in (("out", "out/"), ("out/", "out/"), ("", ""), ("a/b.txt", "a/b.txt/")):
        name = marker_name(prefix)
        assert name.startswith(f"{start}{MARKER_DIR}/") and len(name) == len(start) + 39
    assert marker_name("out") != marker_name("out")


def test_a_detail_never_repeats_a_secret_and_stays_one_short_line() -> None:
    token = "ya29.secret-token"
    echoed = f"proxy said:\n  bad header Authorization: Bearer {token}\n" + "x" * 1000
    detail = clean_detail(echoed, (token, ""))
    assert token not in detail and "[redacted]" in detail
    assert "\n" not in detail and len(detail) == MAX_DETAIL and detail.endswith("...")
    assert detail.startswith("proxy said: bad header Authorization: Bearer [redacted] xxx")
