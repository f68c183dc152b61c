"""The database names the key its secrets are sealed with: a controller whose key file
lacks it is refused; a rotation reseals every value with the new key."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from openevs.db.models import ReplicationPair
from openevs.db.session import Database
from openevs.runtime import Runtime
from openevs.security.sealing import Sealer, SealError, kid_of, new_key, write_keys
from openevs.services.replications import new_link_export
from openevs.services.sealing import check_key, kids_in_use, reseal_all
from tests.support.rows import AZ_A, AZ_B, add_pair, add_volume


def test_a_key_file_without_the_databases_key_is_refused(database: Database, tmp_path: Path) -> None:
    first = Sealer.ephemeral()
    assert check_key(database, first) == first.current_kid
    assert check_key(database, first) == first.current_kid  # idempotent
    other = Sealer.ephemeral()
    with pytest.raises(SealError, match="copy the key file"):
        check_key(database, other)
    both = tmp_path / "secrets.key"
    write_keys(both, [new_key(), *first.keys])  # a rotation's file: the new key first, the old one kept
    assert check_key(database, Sealer.from_file(both)) == first.current_kid


def test_reseal_moves_every_value_to_the_first_key(runtime: Runtime, project_id: str, tmp_path: Path) -> None:
    add_pair(
        runtime, project_id, add_volume(runtime, project_id, AZ_A), add_volume(runtime, project_id, AZ_B)
    )
    old_kid = runtime.sealer.current_kid
    assert kids_in_use(runtime.db) == {old_kid}
    path = tmp_path / "secrets.key"
    write_keys(path, [new_key(), *runtime.sealer.keys])
    sealer = Sealer.from_file(path)
    assert reseal_all(runtime.db, sealer) == 1
    assert reseal_all(runtime.db, sealer) == 0
    assert kids_in_use(runtime.db) == {sealer.current_kid} != {old_kid}
    with runtime.db.session() as s:
        link = s.scalars(select(ReplicationPair.link_export)).one()
    assert kid_of(link) == sealer.current_kid and sealer.open(link, "link").startswith("link-")
    assert new_link_export(sealer) != link
