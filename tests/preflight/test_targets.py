"""Paths as users write them, on the command line, in a paths file and in a samplesheet."""

from __future__ import annotations

from pathlib import Path

import pytest

from credsidecar.errors import BadRequest
from credsidecar.preflight.model import Access, Target
from credsidecar.preflight.targets import (
    FORMS,
    READ,
    WORK_DIR,
    WRITE,
    TargetError,
    is_cloud_uri,
    parse_target,
    targets_from_args,
)


@pytest.mark.parametrize(
    ("uri", "cloud", "location", "container", "prefix"),
    [
        ("s3://alice-data/runs/r1/", "aws", "alice-data", None, "runs/r1/"),
        ("s3://alice-data", "aws", "alice-data", None, ""),
        ("s3://alice-data/", "aws", "alice-data", None, ""),
        ("s3://alice-data/odd#name?v=1%20", "aws", "alice-data", None, "odd#name?v=1%20"),
        ("gs://alice-data/reads/a_R1.fq.gz", "gcp", "alice-data", None, "reads/a_R1.fq.gz"),
        ("gs://my_bucket.example.org/x", "gcp", "my_bucket.example.org", None, "x"),
        ("az://sandbox/alice-data/out", "azure", "sandbox", "alice-data", "out"),
        ("az://sandbox/alice-data", "azure", "sandbox", "alice-data", ""),
        ("https://sandbox.blob.core.windows.net/alice-data/a%20b/c", "azure", "sandbox",
         "alice-data", "a b/c"),
        ("ssh://sandbox-cluster/scratch/alice/work", "hpc", "sandbox-cluster", None,
         "/scratch/alice/work"),
        ("ssh://sandbox-cluster/~/work", "hpc", "sandbox-cluster", None, "~/work"),
    ],
)  # fmt: skip
def test_each_accepted_form_names_its_cloud_location_and_prefix(
    uri: str, cloud: str, location: str, container: str | None, prefix: str
) -> None:
    assert parse_target(uri, READ) == Target(uri, cloud, location, container, prefix, READ)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("alice-data/out", "it has no scheme"),
        ("ftp://host/x", "the scheme 'ftp://' is unknown"),
        ("https://example.org/data", "https:// URLs name Azure Blob storage only"),
        ("s3:///x", "no bucket"),
        ("s3://ab/x", "'ab' is not a bucket name"),
        ("https://acct.blob.core.windows.net/c1/x#frag", "it has a query or fragment"),
        ("https://acct.blob.core.windows.net:8443/c1/x", "it names a user, password or port"),
        ("s3://a:b/x", "'a:b' is not a bucket name"),
        ("az://sandbox", "no container"),
        ("az://Sandbox/c1/x", "'Sandbox' is not a storage account name"),
        ("az://sandbox/Bad_Container/x", "'Bad_Container' is not a blob container name"),
        ("ssh://cluster", "it names no directory on the cluster"),
        (" s3://alice-data/x", "it is empty or has blanks around it"),
    ],
)
def test_a_bad_path_is_a_readable_error_naming_it_and_the_accepted_forms(
    uri: str, why: str
) -> None:
    with pytest.raises(TargetError) as raised:
        parse_target(uri, READ)
    message = str(raised.value)
    assert message.startswith(f"{uri!r} is not a path preflight can check: {why}")
    assert message.endswith(f"; use {FORMS}.")
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, BadRequest)


def test_credentials_in_a_uri_are_refused_and_not_repeated() -> None:
    """A SAS token or user:password in a path is refused, and the message leaves it out."""
    sas = "https://acct.blob.core.windows.net/c1/x?sv=2025-01-05&sig=SECRETSIG"
    with pytest.raises(TargetError, match="a SAS token is not needed") as raised:
        parse_target(sas, READ)
    assert "SECRETSIG" not in str(raised.value)
    assert str(raised.value).startswith("'https://acct.blob.core.windows.net/c1/x?...'")
    with pytest.raises(TargetError) as raised:
        parse_target("s3://AKIAKEY:secret@alice-data/x", READ)
    assert "secret" not in str(raised.value) and "AKIAKEY" not in str(raised.value)
    assert str(raised.value).startswith(
        "'s3://...@alice-data/x' is not a path preflight can check: it names a user or password"
    )


def test_a_target_needs_some_access() -> None:
    with pytest.raises(TargetError, match="no access"):
        parse_target("s3://alice-data/x", frozenset())


def test_cloud_uris_are_recognised_in_cells() -> None:
    assert is_cloud_uri("s3://b/k") and is_cloud_uri(" GS://b/k ") and is_cloud_uri("az://a/c")
    assert is_cloud_uri("https://acct.blob.core.windows.net/c/k")
    assert not is_cloud_uri("https://example.org/x") and not is_cloud_uri("sample_1")
    assert not is_cloud_uri("/data/reads.fq") and not is_cloud_uri("ssh://c/x")


def test_arguments_give_each_kind_its_access_and_work_dirs_everything() -> None:
    targets = targets_from_args(
        ["s3://alice-data/in/"], ["gs://alice-data/out/"], ["az://sandbox/alice-data/work"], [], []
    )
    assert [(t.uri, t.access) for t in targets] == [
        ("s3://alice-data/in/", READ),
        ("gs://alice-data/out/", WRITE),
        ("az://sandbox/alice-data/work", WORK_DIR),
    ]
    assert {Access.READ, Access.WRITE, Access.DELETE} == WORK_DIR


def test_a_paths_file_has_comments_blank_lines_and_optional_access_words(tmp_path: Path) -> None:
    paths = tmp_path / "paths.txt"
    paths.write_text(
        "# inputs\n"
        "s3://shared-refs/refs/genome.fa\n"
        "\n"
        "   gs://alice-data/reads/   # trailing comment\n"
        "write s3://alice-data/results/\n"
        "WORK-DIR ssh://sandbox-cluster/scratch/alice\n"
        "s3://alice-data/odd#name\n"
    )
    targets = targets_from_args([], [], [], [paths], [])
    assert [(t.uri, t.access) for t in targets] == [
        ("s3://shared-refs/refs/genome.fa", READ),
        ("gs://alice-data/reads/", READ),
        ("s3://alice-data/results/", WRITE),
        ("ssh://sandbox-cluster/scratch/alice", WORK_DIR),
        ("s3://alice-data/odd#name", READ),  # `#` inside a key is not a comment
    ]


def test_a_bad_line_in_a_paths_file_names_the_file_and_line(tmp_path: Path) -> None:
    paths = tmp_path / "paths.txt"
    paths.write_text("s3://alice-data/ok\nwrite\n")
    with pytest.raises(TargetError, match=rf"'write' \({paths}:2\) .*must be followed by a path"):
        targets_from_args([], [], [], [paths], [])
    paths.write_text("# fine\nalice-data/out\n")
    with pytest.raises(TargetError, match=rf"'alice-data/out' \({paths}:2\) .*no scheme"):
        targets_from_args([], [], [], [paths], [])


def test_an_unreadable_file_is_a_readable_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(TargetError, match=rf"Cannot read --samplesheet '{missing}': No such"):
        targets_from_args([], [], [], [], [missing])


def test_every_cloud_uri_in_a_samplesheet_is_a_read_target_and_the_rest_is_ignored(
    tmp_path: Path,
) -> None:
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(
        "\ufeffsample,fastq_1,fastq_2,strandedness\n"  # a spreadsheet's byte-order mark
        "S1,s3://alice-data/reads/S1_R1.fq.gz,s3://alice-data/reads/S1_R2.fq.gz,auto\n"
        'S2,"gs://alice-data/reads/S2, lane 1.fq.gz",/local/S2_R2.fq.gz,auto\n'
        "S3,https://sandbox.blob.core.windows.net/alice-data/S3_R1.fq.gz,,reverse\n"
        "S4,s3://alice-data/reads/S1_R1.fq.gz,,auto\n"  # named twice: checked once
    )
    targets = targets_from_args([], [], [], [], [sheet])
    assert [(t.cloud, t.location, t.prefix, t.access) for t in targets] == [
        ("aws", "alice-data", "reads/S1_R1.fq.gz", READ),
        ("aws", "alice-data", "reads/S1_R2.fq.gz", READ),
        ("gcp", "alice-data", "reads/S2, lane 1.fq.gz", READ),
        ("azure", "sandbox", "S3_R1.fq.gz", READ),
    ]


def test_a_bad_cloud_uri_in_a_samplesheet_names_row_and_column(tmp_path: Path) -> None:
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,fastq_1\nS1,s3://x/reads.fq\n")
    with pytest.raises(TargetError, match=rf"\({sheet}:2, column 2\) .*'x' is not a bucket"):
        targets_from_args([], [], [], [], [sheet])


def test_one_path_named_twice_is_checked_once_with_every_access_asked(tmp_path: Path) -> None:
    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text("sample,dir\nS1,az://sandbox/alice-data/work\n")
    targets = targets_from_args(
        ["s3://alice-data/out/", "s3://alice-data/out/"],
        ["s3://alice-data/out/"],
        ["https://sandbox.blob.core.windows.net/alice-data/work"],
        [],
        [sheet],
    )
    assert [(t.uri, t.access) for t in targets] == [
        ("s3://alice-data/out/", READ | WRITE),
        # the az:// spelling of the same path merges into the first spelling seen
        ("https://sandbox.blob.core.windows.net/alice-data/work", WORK_DIR),
    ]
