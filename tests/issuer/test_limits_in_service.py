"""The service refuses to sign tokens that a cloud would reject, and signs nothing then."""

from __future__ import annotations

import pytest

from credsidecar.errors import LimitExceeded
from credsidecar.issuer.service import LaunchRequest
from tests.issuer.conftest import IssuerFixture


def _add_to_policy(issuer: IssuerFixture, old: str, new: str) -> None:
    path = issuer.config.policy_path
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))  # the first: the federated identity
    assert issuer.service.policy_holder.reload(), issuer.service.policy_holder.last_error


def test_too_many_session_tags_refuse_the_exchange(issuer: IssuerFixture) -> None:
    tags = ", ".join(f't{i} = "v"' for i in range(48))
    _add_to_policy(
        issuer,
        'role_arn = "arn:aws:iam::123456789012:role/alice-data"',
        f'role_arn = "arn:aws:iam::123456789012:role/alice-data"\nsession_tags = {{ {tags} }}',
    )
    minted = issuer.service.tokens.mint(
        LaunchRequest(user="alice", run="r", workspace="genomics"), "t"
    )
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "subject_token": minted.token,
        "audience": "sts.amazonaws.com",
    }
    before = issuer.service.store.key_records()[0].last_exp
    with pytest.raises(LimitExceeded, match="51 AWS session tags"):
        issuer.service.tokens.exchange(form)
    # Nothing was signed: the key's record of its latest token did not move.
    assert issuer.service.store.key_records()[0].last_exp == before


def test_oversize_token_is_refused(issuer: IssuerFixture) -> None:
    policy = "x" * 21_000
    _add_to_policy(
        issuer,
        'role_arn = "arn:aws:iam::123456789012:role/alice-data"',
        f'role_arn = "arn:aws:iam::123456789012:role/alice-data"\nsession_policy = "{policy}"',
    )
    before = issuer.service.store.key_records()[0].last_exp
    with pytest.raises(LimitExceeded, match="characters; AWS accepts at most 20000"):
        issuer.service.tokens.mint(LaunchRequest(user="alice", run="r", workspace="genomics"), "t")
    assert issuer.service.store.key_records()[0].last_exp == before


def test_policy_rejects_users_whose_subject_breaks_gcp_limit(issuer: IssuerFixture) -> None:
    path = issuer.config.policy_path
    path.write_text(path.read_text() + f'\n[[users]]\nid = "dave"\nsubject = "{"s" * 200}"\n')
    assert not issuer.service.policy_holder.reload()
    assert "user 'dave'" in str(issuer.service.policy_holder.last_error)
    assert "200 bytes" in str(issuer.service.policy_holder.last_error)
