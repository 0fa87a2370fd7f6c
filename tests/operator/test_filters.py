"""Which watch events start a reconcile: spec, deletion, finalizers, labels - never status alone."""

from __future__ import annotations

import copy
from typing import Any

from hsmd.operator.controller import only_finalizer_added, relevant_change

BASE: dict[str, Any] = {
    "metadata": {"name": "a", "namespace": "n", "generation": 1, "resourceVersion": "10",
                 "labels": {"x": "1"}, "annotations": {"note": "a"}, "finalizers": []},
    "spec": {"hsmPath": "n/a"},
    "status": {"syncStatus": "Pending"},
}


def changed(**meta: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["metadata"].update(meta)
    obj["metadata"]["resourceVersion"] = "11"
    return obj


def test_status_only_update_is_not_relevant() -> None:
    new = changed()
    new["status"] = {"syncStatus": "InSync", "conditions": [{"type": "Ready", "status": "True"}]}
    assert not relevant_change(BASE, new)


def test_relevant_changes() -> None:
    assert relevant_change(None, BASE)
    assert relevant_change(BASE, changed(generation=2))
    assert relevant_change(BASE, changed(deletionTimestamp="2024-01-01T00:00:00Z"))
    assert relevant_change(BASE, changed(finalizers=["other"]))
    assert relevant_change(BASE, changed(labels={"x": "2"}))
    assert not relevant_change(BASE, changed(annotations={"note": "b"}))
    assert relevant_change(BASE, changed(annotations={"note": "b"}), annotations=True)


def test_kind_without_generation_uses_the_spec() -> None:
    old = copy.deepcopy(BASE)
    del old["metadata"]["generation"]
    new = copy.deepcopy(old)
    new["spec"] = {"hsmPath": "n/b"}
    assert relevant_change(old, new)
    new["spec"] = old["spec"]
    new["status"] = {"x": 1}
    assert not relevant_change(old, new)


def test_our_finalizer_echo_is_not_a_reason_to_reconcile() -> None:
    assert only_finalizer_added(BASE, changed(finalizers=["hsm.j5t.io/finalizer"]), "hsm.j5t.io/finalizer")
    assert not only_finalizer_added(BASE, changed(finalizers=["someone/else"]), "hsm.j5t.io/finalizer")
    assert not only_finalizer_added(BASE, changed(finalizers=["hsm.j5t.io/finalizer"], generation=2),
                                    "hsm.j5t.io/finalizer")
    assert not only_finalizer_added(None, BASE, "hsm.j5t.io/finalizer")
