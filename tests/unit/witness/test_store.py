"""The witness journal (witness/store.py): last line wins, torn tails, compaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from openevs.witness import store as store_module
from openevs.witness.arbiter import Record
from openevs.witness.store import RecordStore, StoreError


def test_records_survive_and_the_last_line_wins(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    assert store.load() == []
    store.save([Record("pair:a", 1, "x"), Record("group:g", 1, "x")])
    store.save([Record("pair:a", 2, "y")])
    store.close()
    loaded = {r.key: r for r in RecordStore(tmp_path).load()}
    assert loaded == {"pair:a": Record("pair:a", 2, "y"), "group:g": Record("group:g", 1, "x")}
    assert (tmp_path / "records.log").stat().st_mode & 0o777 == 0o600


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.load()
    store.save([Record("pair:a", 1, "x")])
    store.close()
    with (tmp_path / "records.log").open("ab") as fh:
        fh.write(b'{"key": "pair:b", "ep')
    again = RecordStore(tmp_path)
    assert [r.key for r in again.load()] == ["pair:a"]
    again.save([Record("pair:c", 1, "x")])
    again.close()
    assert sorted(r.key for r in RecordStore(tmp_path).load()) == ["pair:a", "pair:c"]


def test_a_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "records.log").write_text('{"key": "pair:a", "epoch": 1, "holder": "x"}\nnonsense\n')
    with pytest.raises(StoreError, match="line 2"):
        RecordStore(tmp_path).load()


def test_compaction_keeps_exactly_the_live_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "COMPACT_MIN_LINES", 10)
    store = RecordStore(tmp_path)
    store.load()
    for epoch in range(1, 30):
        store.save([Record("pair:a", epoch, "x"), Record("pair:b", epoch, "y")])
    lines = (tmp_path / "records.log").read_text().count("\n")
    assert lines <= 10
    store.forget(["pair:b"])
    store.close()
    assert RecordStore(tmp_path).load() == [Record("pair:a", 29, "x")]
