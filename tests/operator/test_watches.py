"""watches.yaml parsing: operator-sdk's schema, defaults, env overrides, role resolution, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsmd.errors import InvalidArgument
from hsmd.operator.watches import (
    label_selector,
    load_watches,
    parse_duration,
    parse_watches,
)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    for role in ("hsm_secret", "hsm_device", "plain"):
        (tmp_path / "roles" / role / "tasks").mkdir(parents=True)
        (tmp_path / "roles" / role / "tasks" / "main.yml").write_text("[]\n")
    (tmp_path / "roles" / "hsm_secret" / "tasks" / "finalize.yml").write_text("[]\n")
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "p.yml").write_text("[]\n")
    return tmp_path


def parse(project: Path, text: str, **env: str) -> list:
    return parse_watches(text, base_dir=project, environ=env, default_max_concurrent=3)


def test_defaults_follow_operator_sdk_except_mark_unsafe(project: Path) -> None:
    (watch,) = parse(project, "- {group: hsm.j5t.io, version: v1alpha1, kind: HSMSecret, role: hsm_secret}")
    assert watch.role == str(project / "roles" / "hsm_secret")
    assert watch.playbook is None
    assert watch.manage_status is True
    assert watch.watch_dependent_resources is True
    assert watch.watch_cluster_scoped_resources is False
    assert watch.snake_case_parameters is True
    assert watch.mark_unsafe is True  # ours: on by default
    assert watch.reconcile_period == 0
    assert watch.max_runner_artifacts == 20
    assert watch.max_concurrent_reconciles == 3
    assert watch.ansible_verbosity == 2
    assert watch.finalizer is None and watch.batch is None
    assert watch.object_key == "_hsm_j5t_io_hsmsecret"
    assert watch.api_version == "hsm.j5t.io/v1alpha1"


def test_full_entry(project: Path) -> None:
    text = """
- group: hsm.j5t.io
  version: v1alpha1
  kind: HSMSecret
  role: hsm_secret
  vars: {hsm_secret_mode: fast}
  reconcilePeriod: 1m30s
  manageStatus: false
  watchDependentResources: false
  snakeCaseParameters: false
  markUnsafe: false
  maxRunnerArtifacts: 5
  selector:
    matchLabels: {team: a}
    matchExpressions:
      - {key: tier, operator: In, values: [gold, silver]}
      - {key: legacy, operator: DoesNotExist}
  finalizer:
    name: hsm.j5t.io/finalizer
    role: hsm_secret
    tasksFrom: finalize
    vars: {state: absent}
  batch: {maxSize: 200, maxWait: 500ms}
- group: hsm.j5t.io
  version: v1alpha1
  kind: HSMPool
  playbook: playbooks/p.yml
"""
    secret, pool = parse(project, text)
    assert secret.vars == {"hsm_secret_mode": "fast"}
    assert secret.reconcile_period == 90
    assert not secret.manage_status and not secret.watch_dependent_resources
    assert not secret.snake_case_parameters and not secret.mark_unsafe
    assert secret.max_runner_artifacts == 5
    assert secret.selector == "team=a,tier in (gold,silver),!legacy"
    assert secret.finalizer is not None
    assert secret.finalizer.name == "hsm.j5t.io/finalizer"
    assert secret.finalizer.role == str(project / "roles" / "hsm_secret")
    assert secret.finalizer.tasks_from == "finalize"
    assert secret.finalizer.vars == {"state": "absent"}
    assert secret.batch is not None and secret.batch.max_size == 200 and secret.batch.max_wait == 0.5
    assert pool.playbook == str(project / "playbooks" / "p.yml") and pool.role is None


def test_env_overrides_use_operator_sdk_names(project: Path) -> None:
    text = "- {group: hsm.j5t.io, version: v1alpha1, kind: HSMSecret, role: hsm_secret}"
    (watch,) = parse(project, text, MAX_CONCURRENT_RECONCILES_HSMSECRET_HSM_J5T_IO="7",
                     ANSIBLE_VERBOSITY_HSMSECRET_HSM_J5T_IO="0")
    assert watch.max_concurrent_reconciles == 7
    assert watch.ansible_verbosity == 0
    (watch,) = parse(project, text, WORKER_HSMSECRET_HSM_J5T_IO="4")
    assert watch.max_concurrent_reconciles == 4
    with pytest.raises(InvalidArgument, match="MAX_CONCURRENT_RECONCILES_HSMSECRET_HSM_J5T_IO"):
        parse(project, text, MAX_CONCURRENT_RECONCILES_HSMSECRET_HSM_J5T_IO="many")


def test_environment_references_are_expanded(project: Path) -> None:
    text = "- {group: hsm.j5t.io, version: v1alpha1, kind: HSMSecret, role: '${ROLE}', vars: {x: '${UNSET}'}}"
    (watch,) = parse(project, text, ROLE="hsm_secret")
    assert watch.role == str(project / "roles" / "hsm_secret")
    assert watch.vars == {"x": "${UNSET}"}


def test_fqcn_role_is_found_in_collection_paths(project: Path) -> None:
    role = project / "cols" / "ansible_collections" / "hsm" / "secrets" / "roles" / "hsm_pool"
    (role / "tasks").mkdir(parents=True)
    text = "- {group: hsm.j5t.io, version: v1alpha1, kind: HSMPool, role: hsm.secrets.hsm_pool}"
    (watch,) = parse(project, text, ANSIBLE_COLLECTIONS_PATH=str(project / "cols"))
    assert watch.role == str(role)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {group: g, version: v1, kind: K, role: hsm_secret, reconcilePeriods: 1s}", "unknown field"),
        ("- {group: g, version: v1, kind: K}", "must specify role or playbook"),
        ("- {group: g, version: v1, kind: K, role: nope}", "role 'nope' was not found"),
        ("- {group: g, version: v1, kind: K, playbook: nope.yml}", "playbook 'nope.yml' was not found"),
        ("- {group: g, kind: K, role: hsm_secret}", "version must not be empty"),
        ("- {group: g, version: v1, role: hsm_secret}", "kind must not be empty"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, reconcilePeriod: soon}", "not a duration"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, finalizer: {role: plain}}", "must have a name"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, finalizer: {name: f}}", "needs a role"),
        ("- {group: g, version: v1, kind: K, role: plain, finalizer: {name: f, tasksFrom: finalize, vars: {a: 1}}}",
         "does not exist"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, batch: {maxSize: 0}}", "positive integer"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, manageStatus: 'yes'}", "true or false"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret, selector: {matchExpressions: [{key: a, operator: Has}]}}",
         "operator must be one of"),
        ("- {group: g, version: v1, kind: K, role: hsm_secret}\n- {group: g, version: v1, kind: K, role: plain}",
         "duplicate watch"),
        ("{}", "non-empty list"),
        ("- [", "not valid YAML"),
    ],
)
def test_bad_input_is_a_clear_error(project: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(project, text)


def test_finalizer_with_only_vars_reuses_the_watch_role(project: Path) -> None:
    text = "- {group: g, version: v1, kind: K, role: hsm_secret, finalizer: {name: f, vars: {state: absent}}}"
    (watch,) = parse(project, text)
    assert watch.finalizer is not None and watch.finalizer.role is None and watch.finalizer.playbook is None


def test_durations() -> None:
    assert parse_duration("30s", "x") == 30
    assert parse_duration("1h2m3s", "x") == 3723
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration(5, "x") == 5
    assert parse_duration("0", "x") == 0
    for bad in ("-1s", "5", "1x", "", True):
        with pytest.raises(InvalidArgument):
            parse_duration(bad, "x")


def test_selector_rendering() -> None:
    assert label_selector(None, "s") == ""
    assert label_selector({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]},
                                                {"key": "b", "operator": "Exists"}]}, "s") == "a notin (x),b"


def test_repository_watches_file_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    if not (root / "watches.yaml").exists():
        pytest.fail("watches.yaml is missing at the repository root")
    watches = {w.kind: w for w in load_watches(root / "watches.yaml", environ={})}
    assert set(watches) == {"HSMSecret", "HSMDevice", "HSMPool"}
    secret = watches["HSMSecret"]
    assert secret.batch is not None and secret.finalizer is not None
    assert secret.role is not None and secret.role.endswith("hsm_secret")
    assert secret.mark_unsafe
