"""IMDSv2 session tokens: valid until their expiry, forged or altered ones never, and the table
of tokens already verified stays bounded however many tokens are presented."""

from __future__ import annotations

from credsidecar.endpoints.session_tokens import VERIFIED_TOKENS, SessionTokens
from tests.support.clock import FakeClock


def test_a_token_is_valid_until_its_expiry_and_not_after() -> None:
    clock = FakeClock()
    tokens = SessionTokens(clock.mono)
    token = tokens.issue(60)
    assert tokens.valid(token)
    clock.advance(59.9)
    assert tokens.valid(token)
    clock.advance(0.2)
    assert not tokens.valid(token)


def test_altered_or_foreign_tokens_are_refused() -> None:
    tokens = SessionTokens()
    token = tokens.issue(60)
    body, _, mac = token.rpartition(".")
    nonce, _, expiry = body.rpartition(".")
    assert not tokens.valid(f"{nonce}.{int(expiry) + 1000}.{mac}")  # a longer life
    assert not tokens.valid(SessionTokens().issue(60))  # another sidecar's key
    for bad in (None, "", "x" * 201, "é.1.x", token + "x"):
        assert not tokens.valid(bad)


def test_remembered_tokens_stay_bounded_and_a_forgotten_one_is_verified_again() -> None:
    tokens = SessionTokens()
    issued = [tokens.issue(600) for _ in range(VERIFIED_TOKENS + 50)]
    assert all(tokens.valid(token) for token in issued)
    assert len(tokens._verified) == VERIFIED_TOKENS  # the first 50 were forgotten...
    assert issued[0] not in tokens._verified
    assert tokens.valid(issued[0])  # ...and are verified again, not refused
