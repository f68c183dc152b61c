"""`openevs admin secrets`: a rotation of the sealing key (new-key, rotate, drop-old) on
a database with a sealed value, and a controller with another host's key refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from openevs.cli.main import build_app
from openevs.db.models import Project, ReplicationPair
from openevs.db.session import Database
from openevs.security.sealing import Sealer, kid_of
from openevs.services.replications import new_link_export

Run = Callable[..., str]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    app = build_app()
    base = {"OPENEVS_CONFIG": str(tmp_path / "absent.toml"), "OPENEVS_DATA_DIR": str(tmp_path / "data"),
            "OPENEVS_ADMIN_PASSWORD": "cli-admin-pw", "COLUMNS": "200"}  # fmt: skip

    def invoke(*args: str, code: int = 0, **env: str) -> str:
        result = CliRunner().invoke(app, ["admin", "secrets", *args], env={**base, **env}, terminal_width=200)
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def _add_pair(db: Database, sealer: Sealer) -> None:
    with db.session() as s:
        project = s.scalars(select(Project.id)).first()
        assert project is not None
        s.add(ReplicationPair(id="r", project_id=project, status="available", volume_ids="a,b",
                              priority_station="az1.dc1", production_volume_id="a", dr_volume_id="b",
                              link_export=new_link_export(sealer), volume_size_gb=1,
                              volume_type="SSD"))  # fmt: skip


def _link(db: Database) -> str:
    with db.session() as s:
        return s.scalars(select(ReplicationPair.link_export)).one()


def test_a_rotation_reseals_and_another_hosts_key_is_refused(run: Run, tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "pki" / "secrets.key"
    run("show")  # the first start makes the database and the key file
    first = Sealer.from_file(key_file)
    first_kid = first.current_kid  # (the sealer itself follows the file as it changes)
    db = Database(f"sqlite:///{tmp_path / 'data' / 'openevs.db'}")
    try:
        _add_pair(db, first)
        plain = first.open(_link(db), "link")
        assert f"{first_kid}  seals and opens  database's key in use" in run("show")
        run("rotate", code=1)  # one key only: new-key first
        run("new-key")
        assert len(Sealer.from_file(key_file).kids) == 2
        assert "1 values resealed" in run("rotate")
        rotated = Sealer.from_file(key_file)
        assert rotated.current_kid != first_kid and kid_of(_link(db)) == rotated.current_kid
        assert "only key" in run("drop-old")
        last = Sealer.from_file(key_file)
        assert last.kids == [rotated.current_kid] and last.open(_link(db), "link") == plain
        stranger = tmp_path / "other-host.key"
        out = run("show", code=2, OPENEVS_SECRETS_KEY_FILE=str(stranger))
        assert "does not hold" in out
    finally:
        db.dispose()
