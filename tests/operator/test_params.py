"""Extravars exactly like operator-sdk: snake case, ansible_operator_meta, _<group>_<kind>, unsafe marks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hsmd.operator.params import batch_extravars, dump_extravars, mark_unsafe, object_extravars, to_snake
from hsmd.operator.watches import Batch, Finalizer, Watch

# operator-sdk's paramconv test vectors (ToSnake)
SNAKE_CASES = [
    ("var", "var"),
    ("888", "888"),
    ("k8s_var", "k8s_var"),
    ("_k8s_var", "_k8s_var"),
    ("k8s var", "k8s_var"),
    ("ThisShouldHaveUnderscores", "_this_should_have_underscores"),
    ("sizeK8sBuckets", "size_k8s_buckets"),
    ("_CanYou_Handle_mixedVars", "_can_you_handle_mixed_vars"),
    ("this_should_be_a_noop", "this_should_be_a_noop"),
    ("egressIPs", "egress_ips"),
    ("egressIPsEgress", "egress_ips_egress"),
    ("egressIPsegress", "egress_ips_egress"),
    ("IPsegress", "_ips_egress"),
    ("egressIP", "egress_ip"),
    ("egressIPEgress", "egress_ip_egress"),
    ("egressIPegress", "egress_ip_egress"),
    ("URLegressIPEgressHTTP", "url_egress_ip_egress_http"),
    ("URLsegressIPsEgressHTTPs", "_urls_egress_ips_egress_https"),
    ("THIS_IS_SKIP_NOT_SK_IP", "_this_is_skip_not_sk_ip"),
    ("hsmPath", "hsm_path"),
    ("secretName", "secret_name"),
    ("syncInterval", "sync_interval"),
]


@pytest.mark.parametrize(("name", "snake"), SNAKE_CASES)
def test_to_snake_matches_operator_sdk(name: str, snake: str) -> None:
    assert to_snake(name) == snake


WATCH = Watch(group="hsm.j5t.io", version="v1alpha1", kind="HSMSecret", role="/r",
              vars={"extra": 1}, finalizer=Finalizer(name="f", vars={"state": "absent"}),
              batch=Batch(100, 1.0))
CR = {
    "apiVersion": "hsm.j5t.io/v1alpha1",
    "kind": "HSMSecret",
    "metadata": {"name": "db", "namespace": "team-a", "uid": "u1"},
    "spec": {"hsmPath": "team-a/db", "secretName": "{{ lookup('env', 'HOME') }}", "parentRef": {"kindName": "x"}},
}


def test_object_extravars_shape() -> None:
    params = object_extravars(WATCH, CR)
    assert params["ansible_operator_meta"] == {"name": "db", "namespace": "team-a"}
    assert params["hsm_path"] == "team-a/db"
    assert params["parent_ref"] == {"kind_name": "x"}  # nested keys snake-cased too
    assert params["secret_name"] == {"__ansible_unsafe": "{{ lookup('env', 'HOME') }}"}
    assert params["_hsm_j5t_io_hsmsecret"]["metadata"]["name"] == "db"
    assert params["_hsm_j5t_io_hsmsecret"]["spec"]["secretName"] == {"__ansible_unsafe": "{{ lookup('env', 'HOME') }}"}
    assert params["_hsm_j5t_io_hsmsecret_spec"]["hsmPath"] == "team-a/db"  # spec keys as is
    assert params["extra"] == 1
    assert "state" not in params
    assert object_extravars(WATCH, CR, finalizer_run=True)["state"] == "absent"


def test_without_snake_case_and_unsafe() -> None:
    watch = Watch(group="hsm.j5t.io", version="v1alpha1", kind="HSMSecret", role="/r",
                  snake_case_parameters=False, mark_unsafe=False)
    params = object_extravars(watch, CR)
    assert params["secretName"] == "{{ lookup('env', 'HOME') }}"
    assert "secret_name" not in params


def test_batch_extravars() -> None:
    other = dict(CR, metadata={"name": "b", "namespace": "team-a"})
    params = batch_extravars(WATCH, [CR, other])
    assert [o["metadata"]["name"] for o in params["hsm_batch"]] == ["db", "b"]
    assert "ansible_operator_meta" not in params
    assert params["extra"] == 1
    single = batch_extravars(WATCH, [CR])
    assert single["ansible_operator_meta"]["name"] == "db" and len(single["hsm_batch"]) == 1


def test_mark_unsafe_only_wraps_possible_templates() -> None:
    assert mark_unsafe({"a": ["x", "{%", 3, None], "b": "{#"}) == {
        "a": ["x", {"__ansible_unsafe": "{%"}, 3, None], "b": {"__ansible_unsafe": "{#"}}


@pytest.mark.slow
def test_ansible_never_evaluates_jinja_from_a_cr(tmp_path: Path) -> None:
    """Real ansible-playbook: the templated-looking CR field arrives verbatim."""
    extravars = tmp_path / "extravars"
    extravars.write_text(dump_extravars(object_extravars(WATCH, CR)))
    playbook = tmp_path / "pb.yml"
    out = tmp_path / "out.json"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy:\n"
        f"        dest: {out}\n"
        "        content: \"{{ {'name': secret_name, 'obj': _hsm_j5t_io_hsmsecret.spec.secretName,"
        " 'meta': ansible_operator_meta.name} | to_json }}\"\n"
    )
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                    "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{extravars}", str(playbook)],
                   check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    assert result == {"name": "{{ lookup('env', 'HOME') }}", "obj": "{{ lookup('env', 'HOME') }}", "meta": "db"}
