"""The README's run command: `credsidecar dev` and a newcomer following its printout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.jobenv import apply_shell_env
from tests.support.processes import CLI, stop_process, wait_for
from tests.support.stack import run_client

AWS = str(Path(sys.executable).parent / "aws")


def test_dev_lets_alice_list_her_buckets_and_refuses_bobs(tmp_path: Path) -> None:
    env_file, info_file, log = tmp_path / "job.env", tmp_path / "info.json", tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dev", "--env-file", str(env_file), "--info-file", str(info_file)],
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(info_file.exists, "credsidecar dev", proc, log)
        info = json.loads(info_file.read_text())
        # What the printout says to do: source the env file, then use the aws CLI.
        printed = log.read_text()
        assert f". {env_file}" in printed and "aws s3 ls s3://alice-data/" in printed
        env = apply_shell_env(f"set -a; . {env_file}; set +a")
        mine = run_client([AWS, "s3", "ls", "s3://alice-data/"], env)
        assert mine.returncode == 0, mine.stderr
        theirs = run_client([AWS, "s3", "ls", "s3://bob-data/"], env)
        assert theirs.returncode != 0 and "AccessDenied" in theirs.stderr
        ref = run_client([AWS, "s3", "cp", "s3://shared-refs/refs/genome.fa", "-"], env)
        assert ref.stdout.startswith(">chr1")
        assert info["sandbox"]["buckets"].keys() == {"alice-data", "bob-data", "shared-refs"}
        # The same environment serves unmodified Google clients as alice.
        google = run_client(
            [sys.executable, str(Path(__file__).parent / "clients" / "google_clients.py"),
             "alice", info["sandbox"]["gcp"]["id_token_certs_url"]],
            env,
        )  # fmt: skip
        assert google.returncode == 0, google.stderr
        result = json.loads(google.stdout)
        assert (result["list_own"], result["list_other"]) == ("ok", "Forbidden")
        # And unmodified Azure clients, over the sandbox's HTTPS, as alice.
        assert info["sandbox"]["azure"]["blob_url"] in printed
        azure = info["sandbox"]["azure"]
        keys = f"{azure['authority_url']}/{azure['tenant_id']}/discovery/v2.0/keys"
        client = Path(__file__).parent / "clients" / "azure_clients.py"
        done = run_client([sys.executable, str(client), "alice", azure["blob_url"], keys], env)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (
            result["write_own"] == "ok"
            and result["list_other"] == "AuthorizationPermissionMismatch"
        )
    finally:
        code = stop_process(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-2000:]
    assert not Path(info["workdir"]).exists()
    assert "Traceback" not in log.read_text()
