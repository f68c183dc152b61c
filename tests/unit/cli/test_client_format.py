"""How client commands print: tables that fit 80 columns with whole ids,
`--long`, `-c` (order, names, unknown ones), and the json, yaml, value and
csv formats, for lists and for one object (rendered into a string, no server)."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner

from openevs.cli import client_groups, client_replication, client_servers, client_volumes
from openevs.cli.client_common import replication_cell
from openevs.cli.client_format import (
    ListView,
    ObjectView,
    OutputFormat,
    Shape,
    list_view,
    machine_text,
    object_view,
    print_list,
    print_object,
    table_text,
)
from openevs.cli.main import build_app

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LONG_NAME = "a-rather-long-disk-name-without-any-spaces-at-all"


def uid() -> str:
    return str(uuid.uuid4())


def volume(name: str | None = "data", status: str = "available", servers: int = 0) -> dict[str, Any]:
    vid = uid()
    obj = dict.fromkeys(client_volumes.SHAPE.fields)
    obj.update(
        id=vid, name=name, status=status, size=10, availability_zone="az1.dc1", volume_type="SSD",
        multiattach=servers > 1, links=[{"rel": "self", "href": f"http://x/v2/p/volumes/{vid}"}],
        attachments=[{"id": vid, "attachment_id": uid(), "volume_id": vid, "server_id": uid(),
                      "host_name": None, "device": "/dev/vdb", "attached_at": "2024-01-01T00:00:00.000000"}
                     for _ in range(servers)],
        metadata={}, bootable="false", encrypted=False,
    )
    return obj


def server(name: str = "web-1", volumes: int = 0) -> dict[str, Any]:
    obj = dict.fromkeys(client_servers.SHAPE.fields)
    obj.update(id=uid(), name=name, status="SHUTOFF", **{
        "OS-EXT-AZ:availability_zone": "az2.dc2",
        "os-extended-volumes:volumes_attached": [{"id": uid(), "delete_on_termination": False}
                                                 for _ in range(volumes)],
    })
    return obj


def pair(name: str | None = "pair-1", status: str = "available", replication: str = "copying",
         progress: str | None = "42", group: bool = True) -> dict[str, Any]:
    obj = dict.fromkeys(client_replication.SHAPE.fields)
    obj.update(id=uid(), name=name, status=status, replication_status=replication, progress=progress,
               volume_ids=f"{uid()},{uid()}", priority_station="az1.dc1", fault_level="0",
               replication_consistency_group_id=uid() if group else None, replication_model="hypermetro")
    return obj


def group(name: str | None = "cg-1", status: str = "available", members: int = 2) -> dict[str, Any]:
    obj = dict.fromkeys(client_groups.SHAPE.fields)
    obj.update(id=uid(), name=name, status=status, replication_status="active-stopped", progress="100",
               priority_station="az1.dc1", fault_level="0", replication_ids=[uid() for _ in range(members)],
               replication_model="hypermetro")
    return obj


# Each family with objects that are hard to fit: long names, the longest statuses, several ids.
FAMILIES: dict[str, tuple[Shape, Callable[[], list[dict[str, Any]]]]] = {
    "volume": (client_volumes.SHAPE, lambda: [
        volume(), volume(LONG_NAME, "error_extending", servers=2), volume(None, "in-use", servers=1),
        volume("a name with several words in it", "reserved")]),
    "server": (client_servers.SHAPE, lambda: [
        server(), server(LONG_NAME, volumes=3), server("short", volumes=1)]),
    "replication": (client_replication.SHAPE, lambda: [
        pair(), pair(LONG_NAME, "error_deleting", "active-stopped", None), pair(None, group=False),
        pair("copying all the regions", "available", "copying", "100")]),
    "group": (client_groups.SHAPE, lambda: [
        group(), group(LONG_NAME, "error_failovering", members=3), group(None, members=0)]),
}


def render(print_fn: Callable[..., None], obj: Any, view: Any, width: int = 80) -> str:
    buf = io.StringIO()
    print_fn(obj, view, Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def id_values(items: list[dict[str, Any]], view: ListView) -> list[str]:
    """Every id the table's id columns show."""
    found = []
    for item in items:
        for col in view.columns:
            if col.ids:
                value = col.value(item)
                found.extend(value if isinstance(value, list) else [value] if value else [])
    return found


def assert_ids_whole(text: str, ids: list[str]) -> None:
    lines = text.splitlines()
    for one in ids:
        assert any(one in line for line in lines), f"{one} broken across lines:\n{text}"


@pytest.mark.parametrize("family", FAMILIES)
def test_default_table_fits_80_columns_with_whole_ids(family: str) -> None:
    shape, make = FAMILIES[family]
    items = make()
    view = list_view(shape, OutputFormat.table)
    text = render(print_list, items, view)
    widest = max(len(line) for line in text.splitlines())
    assert widest <= 80, f"{widest} columns:\n{text}"
    assert [c.header for c in view.columns][:3] == ["ID", "Name", "Status"]
    ids = id_values(items, view)
    assert ids == [item["id"] for item in items]
    assert_ids_whole(text, ids)
    assert all(UUID.fullmatch(line.split()[0]) for line in text.splitlines()[2:] if line[:1].strip())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width", [80, 200])
def test_long_table_shows_every_column_and_keeps_ids_whole(family: str, width: int) -> None:
    shape, make = FAMILIES[family]
    items = make()
    view = list_view(shape, OutputFormat.table, long=True)
    assert view.columns == shape.columns
    text = render(print_list, items, view, width)
    header = text[:text.index("─")]  # a header may wrap onto lines above the rule
    assert all(word in header for col in shape.columns for word in col.header.split())
    ids = id_values(items, view)
    assert len(ids) > len(items)  # the long columns hold ids too
    assert_ids_whole(text, ids)
    assert all(line == line.rstrip() for line in text.splitlines())


def test_replication_column_shows_progress_while_copying() -> None:
    assert replication_cell({"replication_status": "copying", "progress": "42"}) == "copying 42%"
    assert replication_cell({"replication_status": "active", "progress": "100"}) == "active"
    assert replication_cell({"replication_status": None}) is None
    text = render(print_list, [pair(progress="7")], list_view(client_replication.SHAPE, OutputFormat.table))
    assert "copying 7%" in text


@pytest.mark.parametrize(
    ("names", "headers"),
    [
        (["Status", "ID"], ["Status", "ID"]),
        (["id", "NAME", "replication_status"], ["ID", "Name", "Replication"]),
        (["priority-station", "fault level", "progress"], ["Priority station", "Fault level", "Progress %"]),
        (["Volumes", "replication_consistency_group_id"], ["Volumes", "Group"]),
    ],
)
def test_columns_are_picked_by_header_or_key_in_the_order_given(names: list[str], headers: list[str]) -> None:
    view = list_view(client_replication.SHAPE, OutputFormat.table, names)
    assert [c.header for c in view.columns] == headers
    assert view.picked


def test_unknown_column_lists_the_valid_ones() -> None:
    with pytest.raises(typer.BadParameter) as caught:
        list_view(client_replication.SHAPE, OutputFormat.table, ["ID", "bogus"])
    message = str(caught.value)
    assert "'bogus'" in message
    assert all(col.header in message for col in client_replication.SHAPE.columns)


def test_unknown_field_lists_the_fields() -> None:
    with pytest.raises(typer.BadParameter) as caught:
        object_view(client_groups.SHAPE, OutputFormat.table, ["nope"])
    assert "'nope'" in str(caught.value)
    assert all(key in str(caught.value) for key in client_groups.SHAPE.fields)


@pytest.mark.parametrize(
    "argv",
    [
        ["replication", "list", "-c", "ID", "-c", "bogus"],
        ["volume", "list", "--long", "-c", "Size (TB)"],
        ["group", "show", "00000000-0000-0000-0000-000000000000", "-c", "bogus"],
        ["volume", "create", "--size", "1", "--az", "az1.dc1", "-f", "value", "-c", "bogus"],
    ],
)
def test_cli_refuses_an_unknown_column_with_exit_2_before_any_request(argv: list[str]) -> None:
    # No credentials and no server exist here: the refusal comes before the session.
    result = CliRunner().invoke(build_app(server_side_too=False), argv,
                                env={"OS_CLIENT_CONFIG_FILE": "/nonexistent", "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "bogus" in result.output or "Size (TB)" in result.output
    assert "choose from" in result.output


def test_value_format_is_space_separated_rows_without_header() -> None:
    items = [pair("p1"), pair(None, replication="active", progress="100", group=False)]
    view = list_view(client_replication.SHAPE, OutputFormat.value, ["id", "name", "Group", "volume_ids"])
    lines = render(print_list, items, view).splitlines()
    assert lines == [
        f"{items[0]['id']} p1 {items[0]['replication_consistency_group_id']} {items[0]['volume_ids']}",
        f"{items[1]['id']}   {items[1]['volume_ids']}",
    ]
    default = render(print_list, items, list_view(client_replication.SHAPE, OutputFormat.value))
    assert default.splitlines()[0] == f"{items[0]['id']} p1 available copying 42%"


def test_value_format_of_one_field_is_just_the_value() -> None:
    vol = volume()
    assert render(print_object, vol, object_view(client_volumes.SHAPE, OutputFormat.value, ["ID"])) \
        == vol["id"] + "\n"


def test_csv_has_a_header_row_and_quoted_values() -> None:
    items = [volume("d,1", servers=2), volume(None)]
    text = render(print_list, items, list_view(client_volumes.SHAPE, OutputFormat.csv, long=True))
    lines = text.splitlines()
    assert lines[0] == '"ID","Name","Status","Size","AZ","Type","Multiattach","Attached to"'
    assert lines[1].startswith(f'"{items[0]["id"]}","d,1","available",10,"az1.dc1","SSD","true",')
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][7] == ",".join(a["server_id"] for a in items[0]["attachments"])
    assert rows[2][1] == "" and rows[2][7] == ""


def test_json_and_yaml_keep_the_api_objects_unless_columns_are_picked() -> None:
    items = [pair(), pair()]
    for fmt, load in ((OutputFormat.json, json.loads), (OutputFormat.yaml, yaml.safe_load)):
        assert load(render(print_list, items, list_view(client_replication.SHAPE, fmt))) == items
        assert load(render(print_list, items, list_view(client_replication.SHAPE, fmt, long=True))) == items
        view = list_view(client_replication.SHAPE, fmt, ["Replication", "ID"])
        picked = load(render(print_list, items, view))
        assert picked == [{"replication_status": p["replication_status"], "id": p["id"]} for p in items]
        assert list(picked[0]) == ["replication_status", "id"]


def test_show_is_a_field_value_table_without_links() -> None:
    vol = volume(servers=2)
    text = render(print_object, vol, object_view(client_volumes.SHAPE, OutputFormat.table))
    lines = text.splitlines()
    assert lines[0].split() == ["Field", "Value"]
    assert max(len(line) for line in lines) <= 80
    fields = [line.split()[0] for line in lines[2:] if line[:1].strip()]
    assert fields == [k for k in vol if k != "links"]
    assert_ids_whole(text, [vol["id"], *(f"{a['server_id']} on /dev/vdb" for a in vol["attachments"])])


def test_show_table_puts_a_servers_volumes_one_per_line() -> None:
    srv = server(volumes=2)
    text = render(print_object, srv, object_view(client_servers.SHAPE, OutputFormat.table))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert_ids_whole(text, [v["id"] for v in srv["os-extended-volumes:volumes_attached"]])


def test_show_table_puts_a_pairs_volumes_one_per_line() -> None:
    p = pair()
    text = render(print_object, p, object_view(client_replication.SHAPE, OutputFormat.table))
    prod, dr = p["volume_ids"].split(",")
    line = next(i for i, line in enumerate(text.splitlines()) if line.startswith("volume_ids"))
    assert prod in text.splitlines()[line] and dr in text.splitlines()[line + 1]


def test_show_picks_fields_by_key_or_column_name() -> None:
    p = pair()
    names = ["status", "ID", "Replication", "Volumes"]
    view = object_view(client_replication.SHAPE, OutputFormat.json, names)
    assert view.keys == ("status", "id", "replication_status", "volume_ids")
    shown = json.loads(render(print_object, p, view))
    assert list(shown) == ["status", "id", "replication_status", "volume_ids"]
    table = render(print_object, p, ObjectView(OutputFormat.table, ("links", "id"), client_replication.SHAPE))
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["links", "id"]


def test_show_in_every_other_format() -> None:
    vol = volume()
    whole = object_view(client_volumes.SHAPE, OutputFormat.json)
    assert json.loads(render(print_object, vol, whole)) == vol
    as_yaml = render(print_object, vol, object_view(client_volumes.SHAPE, OutputFormat.yaml))
    assert yaml.safe_load(as_yaml) == vol
    picked = object_view(client_volumes.SHAPE, OutputFormat.csv, ["id", "size", "multiattach", "name"])
    assert render(print_object, vol, picked).splitlines() == [
        '"id","size","multiattach","name"', f'"{vol["id"]}",10,"false","data"']
    values = object_view(client_volumes.SHAPE, OutputFormat.value, ["size", "metadata", "description"])
    assert render(print_object, vol, values) == "10\n{}\n\n"


def test_empty_list() -> None:
    view = list_view(client_groups.SHAPE, OutputFormat.table)
    assert render(print_list, [], view).splitlines()[0].split() == ["ID", "Name", "Status", "Replication"]
    assert render(print_list, [], list_view(client_groups.SHAPE, OutputFormat.value)) == ""
    assert render(print_list, [], list_view(client_groups.SHAPE, OutputFormat.json)) == "[]\n"


@pytest.mark.parametrize(
    ("value", "table", "machine"),
    [
        (None, "-", ""),
        (True, "yes", "true"),
        (3, "3", "3"),
        ([], "-", ""),
        (["a", "b"], "a\nb", "a,b"),
        ({"k": 1}, '{"k": 1}', '{"k": 1}'),
        ([{"id": "x"}], '{"id": "x"}', '[{"id": "x"}]'),
    ],
)
def test_cells(value: Any, table: str, machine: str) -> None:
    assert table_text(value) == table
    assert machine_text(value) == machine
