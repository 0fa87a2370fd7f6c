"""Unit tests of the sandbox's pure pieces: selectors, schemas, patches, managed fields, printing,
protobuf decoding, the journal."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from hsmd.sandbox import managed, protobuf, schema, selectors, tables
from hsmd.sandbox.patch import json_patch, strategic_merge
from hsmd.sandbox.status import StatusError
from hsmd.sandbox.store import ADDED, Store
from hsmd.status import merge_patch


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a in (x, y)", {"a": "y"}, True),
    ("a notin (x,y)", {"a": "x"}, False),
    ("a", {"a": ""}, True),
    ("!a", {"a": "1"}, False),
    ("a>3,b", {"a": "4", "b": "1"}, True),
    ("app.kubernetes.io/name=web,tier notin (db)", {"app.kubernetes.io/name": "web"}, True),
])
def test_label_selectors(selector: str, labels: dict, expected: bool) -> None:
    match = selectors.label_matcher(selector)
    assert match is not None and match(labels) is expected


@pytest.mark.parametrize("bad", ["a in (", "a=b=c", "-a=b", "a in ()", "a=b c"])
def test_bad_label_selectors(bad: str) -> None:
    with pytest.raises(StatusError) as err:
        selectors.label_matcher(bad)
    assert err.value.http_status == 400


def test_field_selector_pins_name_and_rejects_unknown_fields() -> None:
    match, name = selectors.field_matcher("metadata.name=x,type!=Opaque", ("type",))
    assert name == "x" and match is not None
    assert match({"metadata": {"name": "x"}, "type": "kubernetes.io/tls"})
    assert not match({"metadata": {"name": "x"}, "type": "Opaque"})
    with pytest.raises(StatusError):
        selectors.field_matcher("spec.x=1", ("type",))


SCHEMA = {"type": "object", "properties": {
    "spec": {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer", "minimum": 1, "exclusiveMaximum": True, "maximum": 10},
        "s": {"type": "string", "default": "d", "format": "date-time"},
        "m": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "ios": {"x-kubernetes-int-or-string": True},
        "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
    }}}}


def test_schema_defaults_prune_and_errors() -> None:
    obj = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "junk": 1},
           "spec": {"n": 10, "extra": 1, "m": {"k": "v"}, "free": {"a": {"b": 1}}, "ios": "50%",
                    "set": ["a", "a"]}}
    removed: list[str] = []
    schema.prune(obj, SCHEMA, root=True, removed=removed)
    schema.apply_defaults(obj, SCHEMA)
    assert removed == ["metadata.junk", "spec.extra"]
    assert obj["spec"]["s"] == "d" and obj["spec"]["free"] == {"a": {"b": 1}}
    errs = {e.field: e.full() for e in schema.validate(obj, SCHEMA, root=True)}
    assert errs["spec.n"] == "spec.n: Invalid value: 10: spec.n in body should be less than 10"
    assert errs["spec.s"] == 'spec.s: Invalid value: "d": spec.s in body must be of type date-time: "d"'
    assert errs["spec.set[1]"] == 'spec.set[1]: Duplicate value: "a"'
    assert schema.validate({"spec": {}}, SCHEMA)[0].full() == "spec.n: Required value"
    bad = schema.validate({"spec": {"n": 2, "ios": 1.5}}, SCHEMA)
    assert bad[0].field == "spec.ios" and bad[0].reason == "FieldValueTypeInvalid"


def test_structural_schema_checks() -> None:
    assert schema.check_structural({"type": "object"}, "p") == []
    assert [c.field for c in schema.check_structural({}, "p")] == ["p"]
    causes = schema.check_structural({"type": "object", "properties": {"a": {"description": "no type"}}}, "p")
    assert [c.field for c in causes] == ["p.properties[a].type"]


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}}
    out = json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "move", "from": "/a/b",
                                                                         "path": "/c"},
                           {"op": "copy", "from": "/c", "path": "/d"}, {"op": "replace", "path": "/d/0", "value": 9},
                           {"op": "add", "path": "/e~1f", "value": True}])
    assert out == {"a": {}, "c": [1, 2, 3], "d": [9, 2, 3], "e/f": True}
    with pytest.raises(StatusError) as err:
        json_patch(out, [{"op": "remove", "path": "/nope"}])
    assert err.value.http_status == 422


def test_merge_and_strategic_merge() -> None:
    assert merge_patch({"a": 1, "b": {"c": 1}}, {"a": None, "b": {"d": 2}}) == {"b": {"c": 1, "d": 2}}
    live = {"spec": {"containers": [{"name": "a", "image": "1", "ports": [{"containerPort": 80, "name": "http"}]},
                                    {"name": "b", "image": "1"}]},
            "metadata": {"finalizers": ["x"]}}
    out = strategic_merge(live, {"spec": {"containers": [
        {"name": "a", "ports": [{"containerPort": 443}]}, {"name": "b", "$patch": "delete"}]},
        "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]}})
    assert out["spec"]["containers"] == [{"name": "a", "image": "1", "ports": [
        {"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]
    assert out["metadata"]["finalizers"] == ["y"]
    replaced = strategic_merge({"spec": {"x": 1, "y": 2}}, {"spec": {"$patch": "replace", "z": 3}})
    assert replaced == {"spec": {"z": 3}}


def test_managed_fields_update_and_apply() -> None:
    info = managed.builtin_list_info
    old = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    old["metadata"]["managedFields"] = managed.record_update(None, old, manager="m1", api_version="v1", now="t",
                                                             subresource="", list_info=info)
    new = json.loads(json.dumps(old))
    new["data"]["b"] = "2"
    fields = managed.record_update(old, new, manager="m2", api_version="v1", now="t", subresource="", list_info=info)
    owners = {e["manager"]: managed.from_fields_v1(e["fieldsV1"]) for e in fields}
    assert owners == {"m1": {("f:data", "f:a")}, "m2": {("f:data", "f:b")}}
    new["metadata"]["managedFields"] = fields
    with pytest.raises(StatusError) as err:
        managed.apply(new, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "9"}},
                      manager="m3", force=False, api_version="v1", now="t", subresource="", list_info=info,
                      plural="configmaps", group="")
    assert err.value.http_status == 409 and err.value.details["causes"][0]["field"] == ".data.a"
    merged, after = managed.apply(new, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                        "data": {"a": "1", "c": "3"}}, manager="m3", force=False,
                                  api_version="v1", now="t", subresource="", list_info=info, plural="configmaps",
                                  group="")
    assert merged["data"] == {"a": "1", "b": "2", "c": "3"}  # same value: shared ownership, no conflict
    merged["metadata"]["managedFields"] = after
    merged2, _ = managed.apply(merged, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                        "data": {"a": "1"}}, manager="m3", force=False, api_version="v1",
                               now="t", subresource="", list_info=info, plural="configmaps", group="")
    assert merged2["data"] == {"a": "1", "b": "2"}  # c was m3's alone: removed when no longer applied


def test_jsonpath_and_durations() -> None:
    obj = {"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]},
           "spec": {"list": [1, 2]}}
    assert tables.jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert tables.jsonpath(obj, ".spec.list[1]") == [2]
    assert tables.jsonpath(obj, ".spec.missing") == []
    assert [tables.human_duration(s) for s in (5, 130, 3 * 3600 + 120, 3 * 86400)] == ["5s", "2m10s", "3h2m", "3d"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def test_protobuf_secret_envelope() -> None:
    meta = _field(1, b"s1") + _field(3, b"ns")
    entry = _field(1, b"k") + _field(2, b"\x00\x01")
    secret = _field(1, meta) + _field(2, entry) + _field(3, b"Opaque")
    body = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Secret")) + _field(2, secret)
    obj = protobuf.decode(body)
    assert obj == {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1", "namespace": "ns"},
                   "data": {"k": base64.b64encode(b"\x00\x01").decode()}, "type": "Opaque"}
    unknown = protobuf.MAGIC + _field(1, _field(1, b"apps/v1") + _field(2, b"Deployment")) + _field(2, b"")
    with pytest.raises(StatusError) as err:
        protobuf.decode(unknown)
    assert err.value.http_status == 415


def test_journal_survives_torn_tail_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "objects.jsonl"
    store = Store(history_window=10, journal=path)
    with store.lock:
        for i in range(5):
            store.put("/configmaps", "default", f"c{i}", {"metadata": {"name": f"c{i}"}}, event=ADDED)
        store.remove("/configmaps", "default", "c0", {"metadata": {"name": "c0"}})
    store.close()
    with path.open("ab") as handle:
        handle.write(b'{"k":"/configmaps","ns":"default","n":"torn","o":{"meta')  # killed mid-write
    again = Store(history_window=10, journal=path)
    assert again.rv == 6 and again.get("/configmaps", "default", "c0") is None
    assert again.get("/configmaps", "default", "c4") is not None
    assert again.compacted == 6  # no history after a restart: older watches get 410
    assert len(path.read_text().splitlines()) == 5  # header + 4 live objects
    again.close()
