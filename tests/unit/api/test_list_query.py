"""The list-route query models: field names and limits per family, paging rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from openevs.api.groups import GroupListQuery
from openevs.api.list_query import ListQuery
from openevs.api.replications import PairListQuery
from openevs.api.servers import ServerListQuery
from openevs.api.volumes import VolumeListQuery
from openevs.domain.errors import InvalidInput

SORT_KEYS = ("created_at", "name")


@pytest.mark.parametrize(
    ("model", "params", "filters", "longest"),
    [
        (VolumeListQuery, {"offset", "sort", "all_tenants"}, {"name", "status", "availability_zone"}, 255),
        (ServerListQuery, set(), {"name", "status"}, 255),
        (
            PairListQuery, {"offset"},
            {"name", "status", "replication_consistency_group_id", "volume_ids", "volume_id",
             "priority_station"},
            1024,
        ),
        (GroupListQuery, {"offset"}, {"name", "status", "priority_station", "volume_id"}, 1024),
    ],
)
def test_each_family_reads_its_parameters(
    model: type[ListQuery], params: set[str], filters: set[str], longest: int
) -> None:
    paging = {"limit", "marker", "sort_key", "sort_dir", "changes-since"}
    names = {field.alias or name for name, field in model.model_fields.items()}
    assert names == paging | params | filters
    assert set(model.FILTERS) == filters
    query = model.model_validate({"name": "n" * longest, "changes-since": "2020-01-01", "bogus": "x"})
    assert query.filters()["name"] == "n" * longest
    assert query.page(SORT_KEYS).changes_since is not None
    with pytest.raises(ValidationError, match=f"at most {longest} characters"):
        model.model_validate({"marker": "m" * (longest + 1)})
    with pytest.raises(ValidationError, match="at most 64 characters"):
        model.model_validate({"changes-since": "2" * 65})


def test_offset_counts_only_where_documented() -> None:
    assert VolumeListQuery.model_validate({"offset": "3"}).page(SORT_KEYS).offset == 3
    assert GroupListQuery.model_validate({"offset": "3"}).page(SORT_KEYS).offset == 3
    assert ServerListQuery.model_validate({"offset": "3"}).page(SORT_KEYS).offset == 0


def test_volumes_take_cinder_sort_when_sort_key_is_absent() -> None:
    page = VolumeListQuery.model_validate({"sort": "name:asc"}).page(SORT_KEYS)
    assert (page.sort_key, page.sort_dir) == ("name", "asc")
    page = VolumeListQuery.model_validate({"sort": "name:asc", "sort_key": "created_at"}).page(SORT_KEYS)
    assert (page.sort_key, page.sort_dir) == ("created_at", "desc")


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"sort_dir": "up"}, {"sort_key": "size"}])
def test_bad_paging_values_are_refused_by_the_paging_rules(params: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        PairListQuery.model_validate(params).page(SORT_KEYS)
