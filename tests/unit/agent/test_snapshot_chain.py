"""The snapshot chain's rules (agent/snapshot_chain.py): which layer serves a read,
what a write must preserve, what a delete merges, what a rollback rewrites."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from openevs.agent.mirror.engine import REGION_BYTES as R
from openevs.agent.snapshot_chain import (
    LIVE,
    Layer,
    changed_since,
    merge_on_delete,
    merge_ranges,
    plan_read,
    regions_of,
    runs,
    source_of,
    to_preserve,
)


def test_regions_of_a_range() -> None:
    assert list(regions_of(0, 1)) == [0]
    assert list(regions_of(R - 1, 2)) == [0, 1]
    assert list(regions_of(R, R)) == [1]
    assert list(regions_of(5, 0)) == []


def test_nothing_to_preserve_without_snapshots_or_once_preserved() -> None:
    assert to_preserve(None, 0, 10 * R) == []
    layer = Layer("s", 4 * R, {1})
    assert to_preserve(layer, 0, 3 * R) == [0, 2]
    assert to_preserve(layer, R, 10) == []
    assert to_preserve(layer, 3 * R, 4 * R) == [3]  # regions past the snapshot's size are not its


def test_reads_walk_forward_to_the_first_layer_holding_the_region() -> None:
    chain = [Layer("a", 4 * R, {0}), Layer("b", 4 * R, {0, 1}), Layer("c", 4 * R, {2})]
    assert [source_of(chain, 0, r) for r in range(4)] == [0, 1, 2, LIVE]
    assert [source_of(chain, 1, r) for r in range(4)] == [1, 1, 2, LIVE]
    assert [source_of(chain, 2, r) for r in range(4)] == [LIVE, LIVE, 2, LIVE]


def test_plan_read_joins_pieces_and_clips_to_the_size() -> None:
    chain = [Layer("a", 3 * R + 100, {1, 2})]
    assert plan_read(chain, 0, 0, 10 * R) == [(LIVE, 0, R), (0, R, 2 * R), (LIVE, 3 * R, 100)]
    assert plan_read(chain, 0, R + 5, 10) == [(0, R + 5, 10)]


def test_delete_merges_only_what_the_older_one_read_through() -> None:
    chain = [Layer("a", 4 * R, {0}), Layer("b", 4 * R, {0, 1, 3}), Layer("c", 2 * R, {1})]
    assert not merge_on_delete(chain, 0)
    assert set(merge_on_delete(chain, 1)) == {1, 3}
    assert not merge_on_delete(chain, 2)  # b already holds region 1


def test_changed_since_is_the_union_of_later_layers() -> None:
    chain = [Layer("a", 2 * R, {0}), Layer("b", 4 * R, {1, 3})]
    assert set(changed_since(chain, 0)) == {0, 1}  # region 3 is past a's size
    assert set(changed_since(chain, 1)) == {1, 3}


def test_runs_and_ranges() -> None:
    assert runs([5, 1, 2, 3, 7]) == [(1, 3), (5, 1), (7, 1)]
    assert merge_ranges([(10, 5), (0, 10), (20, 1), (14, 2)]) == [(0, 16), (20, 1)]


class Model:
    """A chain over a tiny disk held as bytes per region, against which the rules are checked."""

    def __init__(self, regions: int) -> None:
        self.disk = [0] * regions  # region -> version written
        self.chain: list[Layer] = []
        self.copies: list[dict[int, int]] = []  # per layer: region -> preserved version
        self.truth: list[list[int]] = []  # per layer: the disk when taken

    def take(self) -> None:
        self.chain.append(Layer(f"s{len(self.chain)}", len(self.disk) * R))
        self.copies.append({})
        self.truth.append(list(self.disk))

    def write(self, region: int, version: int) -> None:
        newest = self.chain[-1] if self.chain else None
        for r in to_preserve(newest, region * R, 1):
            self.copies[-1][r] = self.disk[r]
            self.chain[-1].preserved.add(r)
        self.disk[region] = version

    def delete(self, index: int) -> None:
        for r in merge_on_delete(self.chain, index):
            self.copies[index - 1][r] = self.copies[index][r]
            self.chain[index - 1].preserved.add(r)
        del self.chain[index], self.copies[index], self.truth[index]

    def rollback(self, index: int) -> None:
        target = self.view(index)
        for r in sorted(changed_since(self.chain, index)):
            self.write(r, target[r])

    def view(self, index: int) -> list[int]:
        out = []
        for r in range(len(self.disk)):
            source = source_of(self.chain, index, r)
            out.append(self.disk[r] if source == LIVE else self.copies[source][r])
        return out


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_every_view_equals_the_disk_when_it_was_taken(seed: int) -> None:
    rng = random.Random(seed)
    model = Model(8)
    for step in range(60):
        op = rng.random()
        if op < 0.15:
            model.take()
        elif op < 0.25 and model.chain:
            model.delete(rng.randrange(len(model.chain)))
        elif op < 0.3 and model.chain:
            index = rng.randrange(len(model.chain))
            model.rollback(index)
            assert model.disk == model.truth[index]
        else:
            model.write(rng.randrange(8), step + 1)
        for i in range(len(model.chain)):
            assert model.view(i) == model.truth[i]
