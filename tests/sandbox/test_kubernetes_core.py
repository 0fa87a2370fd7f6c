"""kubernetes.core against the API (sandbox or real cluster): k8s present/absent/apply/server-side
apply with wait, k8s_info with label and field selectors — one playbook through ansible-runner."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.sandbox.conftest import Cluster, unique

PLAYBOOK = r"""
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/kubernetes.core.k8s:
      kubeconfig: "{{ kubeconfig }}"
  tasks:
    - name: Namespace
      kubernetes.core.k8s:
        state: present
        definition: {apiVersion: v1, kind: Namespace, metadata: {name: "{{ ns }}"}}

    - name: CRD, waiting until it is established
      kubernetes.core.k8s:
        state: present
        definition: "{{ crd }}"
        wait: true
        wait_condition: {type: Established, status: "True"}
        wait_timeout: 30

    - name: ConfigMap present
      kubernetes.core.k8s:
        state: present
        namespace: "{{ ns }}"
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: demo, labels: {app: demo, tier: web}}
          data: {greeting: hello}
      register: created

    - name: ConfigMap present again (idempotent)
      kubernetes.core.k8s:
        state: present
        namespace: "{{ ns }}"
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: demo, labels: {app: demo, tier: web}}
          data: {greeting: hello}
      register: again

    - name: Apply a change
      kubernetes.core.k8s:
        state: present
        apply: true
        namespace: "{{ ns }}"
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: applied, labels: {app: demo}}
          data: {one: "1", two: "2"}
      register: applied1

    - name: Apply with a key removed
      kubernetes.core.k8s:
        state: present
        apply: true
        namespace: "{{ ns }}"
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: applied, labels: {app: demo}}
          data: {one: "1"}
      register: applied2

    - name: Apply the same again (idempotent)
      kubernetes.core.k8s:
        state: present
        apply: true
        namespace: "{{ ns }}"
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {name: applied, labels: {app: demo}}
          data: {one: "1"}
      register: applied3

    - name: Server-side apply of a custom resource
      kubernetes.core.k8s:
        state: present
        apply: true
        server_side_apply: {field_manager: conformance, force_conflicts: false}
        namespace: "{{ ns }}"
        definition:
          apiVersion: "{{ group }}/v1"
          kind: Widget
          metadata: {name: ssa-widget, labels: {app: demo}}
          spec: {size: 5}
      register: ssa

    - name: Secret with wait
      kubernetes.core.k8s:
        state: present
        namespace: "{{ ns }}"
        wait: true
        definition:
          apiVersion: v1
          kind: Secret
          metadata: {name: creds, labels: {app: other}}
          stringData: {password: s3cret}
      no_log: true

    - name: Find by label selector
      kubernetes.core.k8s_info:
        kubeconfig: "{{ kubeconfig }}"
        kind: ConfigMap
        namespace: "{{ ns }}"
        label_selectors: ["app=demo", "tier in (web)"]
      register: by_label

    - name: Find by field selector
      kubernetes.core.k8s_info:
        kubeconfig: "{{ kubeconfig }}"
        kind: ConfigMap
        namespace: "{{ ns }}"
        field_selectors: ["metadata.name=applied"]
      register: by_field

    - name: Find the custom resource
      kubernetes.core.k8s_info:
        kubeconfig: "{{ kubeconfig }}"
        api_version: "{{ group }}/v1"
        kind: Widget
        namespace: "{{ ns }}"
        label_selectors: ["app=demo"]
      register: widgets

    - name: Delete and wait
      kubernetes.core.k8s:
        state: absent
        namespace: "{{ ns }}"
        kind: ConfigMap
        name: demo
        wait: true
        wait_timeout: 30
      register: deleted

    - name: Delete again (idempotent)
      kubernetes.core.k8s:
        state: absent
        namespace: "{{ ns }}"
        kind: ConfigMap
        name: demo
      register: deleted_again

    - name: Report
      ansible.builtin.copy:
        dest: "{{ report }}"
        content: "{{ {'created': created.changed, 'again': again.changed, 'applied1': applied1.changed,
                      'applied2': applied2.changed, 'applied3': applied3.changed,
                      'applied_data': applied2.result.data, 'ssa': ssa.changed, 'ssa_size': ssa.result.spec.size,
                      'ssa_color': ssa.result.spec.color,
                      'by_label': by_label.resources | map(attribute='metadata.name') | list,
                      'by_field': by_field.resources | map(attribute='metadata.name') | list,
                      'widgets': widgets.resources | map(attribute='metadata.name') | list,
                      'deleted': deleted.changed, 'deleted_again': deleted_again.changed} | to_json }}"
        mode: "0600"
"""


def _collections_path() -> str:
    spec = importlib.util.find_spec("ansible_collections.kubernetes.core")
    assert spec is not None and spec.submodule_search_locations, "kubernetes.core is not installed"
    core_dir = Path(next(iter(spec.submodule_search_locations)))
    return str(core_dir.parents[2])  # .../site-packages (holds ansible_collections/)


@pytest.mark.slow
def test_kubernetes_core_playbook(cluster: Cluster, tmp_path: Path) -> None:
    import ansible_runner

    from tests.sandbox.conftest import WIDGET_CRD

    kubeconfig = cluster.handle.kubeconfig if cluster.is_sandbox else os.environ["KUBECONFIG"]
    ns = unique("hsmd-conf-ansible")
    group = f"{unique('k')}.hsmd.test"
    crd = json.loads(json.dumps(WIDGET_CRD))
    crd["metadata"]["name"] = f"widgets.{group}"
    crd["spec"]["group"] = group
    private = tmp_path / "runner"
    (private / "project").mkdir(parents=True)
    (private / "project" / "test.yml").write_text(PLAYBOOK)
    (private / "inventory").mkdir()
    (private / "inventory" / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    report = tmp_path / "report.json"
    try:
        result = ansible_runner.run(
            private_data_dir=str(private), playbook="test.yml", quiet=True,
            extravars={"kubeconfig": kubeconfig, "ns": ns, "group": group, "crd": crd, "report": str(report)},
            envvars={"ANSIBLE_COLLECTIONS_PATH": _collections_path(), "ANSIBLE_NOCOLOR": "1",
                     # ansible-playbook of this interpreter's environment
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                     "ANSIBLE_HOST_KEY_CHECKING": "False"})
        if result.status != "successful":
            failures = [e.get("event_data", {}).get("res", {}).get("msg") for e in result.events
                        if e.get("event") == "runner_on_failed"]
            pytest.fail(f"playbook {result.status} (rc={result.rc}): {failures}")
        facts = json.loads(report.read_text())
        assert facts["created"] is True and facts["again"] is False
        assert facts["applied1"] is True and facts["applied2"] is True and facts["applied3"] is False
        assert facts["applied_data"] == {"one": "1"}
        assert facts["ssa"] is True and facts["ssa_size"] == 5 and facts["ssa_color"] == "red"
        assert sorted(facts["by_label"]) == ["demo"]
        assert facts["by_field"] == ["applied"]
        assert facts["widgets"] == ["ssa-widget"]
        assert facts["deleted"] is True and facts["deleted_again"] is False
        core = client.CoreV1Api(cluster.api)
        names = {c.metadata.name for c in core.list_namespaced_config_map(ns).items}
        assert "demo" not in names and "applied" in names
        secret = core.read_namespaced_secret("creds", ns)
        assert secret.type == "Opaque" and set(secret.data) == {"password"}
        assert "s3cret" not in "".join(json.dumps(e) for e in result.events)  # no_log held
    finally:
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(cluster.api).delete_namespace(ns)
        with contextlib.suppress(client.ApiException):
            client.ApiextensionsV1Api(cluster.api).delete_custom_resource_definition(crd["metadata"]["name"])
