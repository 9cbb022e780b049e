"""`assay keys create | list | revoke`, run as an operator runs them (embedded SQLite)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]


def assay(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "main", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_prints_the_key_last_list_never_shows_it_revoke_marks_it(tmp_path: Path):
    created = assay(tmp_path, "create", "--owner", "alice", "--name", "ci", "--scope", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("assay_")

    listed = assay(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (key,) = json.loads(listed.stdout)
    assert (key["owner_id"], key["name"], key["scope"]) == ("alice", "ci", "read")
    assert key["revoked_at"] is None and secret not in listed.stdout
    assert "secret_hash" not in key
    engine = create_engine(f"sqlite:///{tmp_path / 'assay.db'}")
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert secret not in str(dict(stored))  # only its hash is stored

    revoked = assay(tmp_path, "revoke", key["id"])
    assert revoked.returncode == 0, revoked.stderr
    (key,) = json.loads(assay(tmp_path, "list", "--json").stdout)
    assert key["revoked_at"] is not None
    table = assay(tmp_path, "list")
    assert "alice" in table.stdout and secret not in table.stdout


def test_bad_input_is_a_clear_message_and_exit_code_2(tmp_path: Path):
    bad_owner = assay(tmp_path, "create", "--owner", "has space")
    assert bad_owner.returncode == 2 and "owner must be" in bad_owner.stdout
    bad_scope = assay(tmp_path, "create", "--owner", "bob", "--scope", "root")
    assert bad_scope.returncode == 2
    missing = assay(tmp_path, "revoke", "00000000-0000-7000-8000-000000000000")
    assert missing.returncode == 2 and "not found" in missing.stdout
