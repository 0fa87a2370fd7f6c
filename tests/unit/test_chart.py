"""The Helm chart without helm: values.yaml against the strict values.schema.json, every .Values
reference present in values.yaml, and every template valid YAML once its Go-template actions are
replaced by placeholders (helm is not installed here; `helm lint` covers the rest where it is)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "hsm-secrets-operator"
TEMPLATES = sorted(p for p in (CHART / "templates").glob("*.yaml"))
CONTROL = re.compile(r"^\s*\{\{-?\s*(if|else|end|with|range|define)\b.*\}\}\s*$")
BLOCK = re.compile(r"\{\{-?[^}]*\|\s*nindent\s+(\d+)\s*-?\}\}")
INLINE = re.compile(r"\{\{-?.*?-?\}\}")
VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))


def without_go_template(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if CONTROL.match(line):
            continue
        line = BLOCK.sub(lambda m: "\n" + " " * int(m.group(1)) + "placeholder: x", line)
        lines.append(INLINE.sub("x", line))
    return "\n".join(lines)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "hsm-secrets-operator"
    assert {p.name for p in (CHART / "crds").glob("*.yaml")} == {
        "hsm.j5t.io_hsmsecrets.yaml", "hsm.j5t.io_hsmdevices.yaml", "hsm.j5t.io_hsmpools.yaml"}
    assert all(re.fullmatch(r"[a-z]+-[a-z]+\.yaml", p.name) for p in TEMPLATES), [p.name for p in TEMPLATES]


def test_default_values_match_the_strict_schema() -> None:
    validator().validate(values())
    for bad in ({"unknown": 1}, {"operator": {"replicas": 0}}, {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
                {"proxy": {"enabled": True, "pool": ""}}, {"accessPolicy": {"rules": [{"namespaces": ["a"],
                                                                                       "paths": ["a/**"],
                                                                                       "verbs": ["steal"]}]}}):
        with pytest.raises(jsonschema.ValidationError):
            validator().validate({**values(), **bad})
    validator().validate({**values(), "proxy": {**values()["proxy"], "enabled": True, "pool": "hsm-system/pico-pool"}})


def test_every_values_reference_exists() -> None:
    known = values()
    missing = []
    for path in [*TEMPLATES, CHART / "templates" / "_helpers.tpl"]:
        for ref in VALUES_REF.findall(path.read_text()):
            node: Any = known
            for key in ref.strip(".").split("."):
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{path.name}: .Values{ref}")
                    break
                node = node[key]
    assert not missing, missing


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_is_yaml_with_kubernetes_objects(template: Path) -> None:
    docs = [d for d in yaml.safe_load_all(without_go_template(template.read_text())) if d]
    assert docs, f"{template.name} renders nothing"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), template.name
        assert doc["metadata"].get("name"), template.name


def test_each_component_has_its_own_service_account() -> None:
    kinds: dict[str, set[str]] = {}
    for template in TEMPLATES:
        component = template.name.split("-")[0]
        for doc in yaml.safe_load_all(without_go_template(template.read_text())):
            if doc:
                kinds.setdefault(component, set()).add(doc["kind"])
    for component in ("operator", "discovery", "agent", "proxy"):
        assert "ServiceAccount" in kinds[component], component
    assert {"ClusterRole", "Role"} <= kinds["operator"] and "Deployment" in kinds["operator"]
    assert "DaemonSet" in kinds["discovery"] and {"Deployment", "Service"} <= kinds["proxy"]
    assert "NetworkPolicy" in kinds["namespace"] and "ConfigMap" in kinds["policy"]
