"""ansible-runner runs for real: private data dirs, extravars, results read in memory, failures,
artifact rotation, nothing secret on disk, cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hsmd.operator.runner import AnsibleRunner
from hsmd.operator.watches import Batch, Finalizer, Watch

pytestmark = pytest.mark.slow

MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

def main():
    module = AnsibleModule(argument_spec=dict(objects=dict(type="list", elements="dict", required=True),
                                              fail=dict(type="bool", default=False)))
    if module.params["fail"]:
        module.fail_json(msg="told to fail")
    names = [o["metadata"]["name"] for o in module.params["objects"]]
    module.exit_json(changed=True, objects=[{"name": n, "ready": True} for n in names])

main()
'''

TASKS = '''
- name: Read a secret without logging it
  ansible.builtin.slurp:
    src: "{{ secret_file }}"
  register: secret
  no_log: true
- name: Use the secret without logging it
  ansible.builtin.set_fact:
    derived: "{{ secret.content | b64decode }}"
  no_log: true
- name: Sync the batch
  echo_batch:
    objects: "{{ hsm_batch }}"
    fail: "{{ fail_batch | default(false) }}"
- name: Record what Jinja saw
  ansible.builtin.copy:
    dest: "{{ out_file }}"
    content: "{{ hsm_batch | map(attribute='spec') | list | to_json }}"
'''

SECRET = "s3cr3t-value-never-on-disk"


@pytest.fixture()
def role(tmp_path: Path) -> Path:
    role = tmp_path / "roles" / "echo"
    (role / "tasks").mkdir(parents=True)
    (role / "library").mkdir()
    (role / "library" / "echo_batch.py").write_text(MODULE)
    (role / "tasks" / "main.yml").write_text(TASKS)
    (role / "tasks" / "finalize.yml").write_text(
        "- name: Finalize\n  ansible.builtin.copy:\n    dest: \"{{ out_file }}\"\n"
        "    content: \"{{ {'state': state, 'n': hsm_batch | length} | to_json }}\"\n")
    (role / "tasks" / "slow.yml").write_text("- name: Sleep\n  ansible.builtin.command: sleep 60\n  changed_when: false\n")
    (tmp_path / "secret").write_text(SECRET)
    return role


def objects(n: int) -> list[dict]:
    return [{"apiVersion": "x/v1", "kind": "Echo", "metadata": {"name": f"o{i}", "namespace": "ns"},
             "spec": {"value": "{{ 7 * 7 }}", "n": i}} for i in range(n)]


def make_watch(role: Path, **kw: object) -> Watch:
    base = dict(group="x", version="v1", kind="Echo", role=str(role), batch=Batch(10, 0.1),
                max_runner_artifacts=2, ansible_verbosity=0,
                finalizer=Finalizer(name="x/f", vars={"state": "absent"}, tasks_from="finalize"))
    base.update(kw)
    return Watch(**base)  # type: ignore[arg-type]


def test_batch_run_results_rotation_and_no_secret_on_disk(role: Path, tmp_path: Path) -> None:
    runner = AnsibleRunner(tmp_path / "runner", result_actions=["echo_batch"])
    watch = make_watch(role)
    out = tmp_path / "out.json"
    extra = {"secret_file": str(tmp_path / "secret"), "out_file": str(out)}
    for _ in range(3):
        result = runner.run(watch, objects(3), extra_vars=extra)
        assert result.ok, result.summary()
    (res,) = result.results["echo_batch"]
    assert [o["name"] for o in res["objects"]] == ["o0", "o1", "o2"]
    assert "invocation" not in res
    assert '"{{ 7 * 7 }}"' in out.read_text()  # markUnsafe: never evaluated
    root = tmp_path / "runner" / "x" / "v1" / "Echo" / "artifacts"
    runs = sorted(p.name for p in root.iterdir() if not p.is_symlink())
    assert len(runs) == 2  # maxRunnerArtifacts
    assert (root / "latest").resolve().name == result.ident
    # private data dirs are gone; nothing under the runner dir holds the secret
    leftovers = [p for p in (tmp_path / "runner").iterdir() if p.name != "x"]
    assert leftovers == []
    for path in (tmp_path / "runner").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert not list(root.rglob("stdout"))


def test_failure_is_reported_with_task_and_message(role: Path, tmp_path: Path) -> None:
    runner = AnsibleRunner(tmp_path / "runner", result_actions=["echo_batch"])
    extra = {"secret_file": str(tmp_path / "secret"), "out_file": str(tmp_path / "o"), "fail_batch": True}
    result = runner.run(make_watch(role), objects(2), extra_vars=extra)
    assert not result.ok
    assert result.failures[0].message == "told to fail"
    assert "Sync the batch" in result.summary()


def test_finalizer_run_uses_tasks_from_and_vars(role: Path, tmp_path: Path) -> None:
    runner = AnsibleRunner(tmp_path / "runner")
    out = tmp_path / "fin.json"
    result = runner.run(make_watch(role), objects(4), finalizer_run=True, extra_vars={"out_file": str(out)})
    assert result.ok, result.summary()
    assert out.read_text() == '{"state": "absent", "n": 4}'


def test_cancel_kills_the_run(role: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    # module files under tmp_path too, so every process of the run names tmp_path in its command line
    temp = {"ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp")}
    runner = AnsibleRunner(tmp_path / "runner", cancel=cancel, extra_env=temp)
    watch = make_watch(role, finalizer=Finalizer(name="x/f", vars={"a": 1}, tasks_from="slow"))
    threading.Timer(3.0, cancel.set).start()
    start = time.monotonic()
    result = runner.run(watch, objects(1), finalizer_run=True)
    assert result.status == "canceled"
    assert time.monotonic() - start < 20
    # ansible's workers run in sessions of their own; none of the run's processes may survive it
    time.sleep(0.5)
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp_path).encode() in cmdline:
                leftovers.append((proc.name, cmdline[:200]))
    assert leftovers == []
