"""hsmd.policy: the one access-policy implementation shared by the operator and the broker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hsmd.errors import InvalidArgument
from hsmd.policy import Policy, PolicyFile, path_matches

POLICY = """
rules:
  - namespaces: ["team-a", "payments-*"]
    serviceAccounts: ["*"]
    paths: ["team-a/**", "shared/tls/*"]
    verbs: [get, list]
  - namespaces: ["ci"]
    serviceAccounts: ["crypto-gen"]
    paths: ["ci/**"]
    verbs: [create, update, get]
"""


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("team-a/**", "team-a", True),
        ("team-a/**", "team-a/db", True),
        ("team-a/**", "team-a/db/x", True),
        ("team-a/**", "team-ab/db", False),
        ("shared/tls/*", "shared/tls/web", True),
        ("shared/tls/*", "shared/tls/web/key", False),
        ("shared/tls/*", "shared/tls", False),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "a/b/c/y", False),
        ("**", "anything/at/all", True),
        ("**/db", "x/y/db", True),
        ("db", "db2", False),
        ("db*", "db2", True),
        ("db*", "db/x", False),
        ("a.b", "axb", False),
    ],
)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    assert path_matches(pattern, path) is expected


def test_rules_only_grant() -> None:
    policy = Policy.parse(POLICY)
    assert policy.allows("team-a", "get", "team-a/db", "app")
    assert policy.allows("payments-eu", "list", "shared/tls/web", "app")
    assert not policy.allows("payments-eu", "create", "shared/tls/web", "app")
    assert not policy.allows("team-b", "get", "team-a/db", "app")
    assert policy.allows("ci", "create", "ci/build/key", "crypto-gen")
    assert not policy.allows("ci", "create", "ci/build/key", "other-sa")
    assert not policy.allows("ci", "delete", "ci/build/key", "crypto-gen")


def test_operator_question_ignores_service_accounts() -> None:
    policy = Policy.parse(POLICY)
    assert policy.allows("ci", "get", "ci/x")


def test_defaults() -> None:
    assert not Policy.deny_all().allows("team-a", "get", "team-a/db", "app")
    default = Policy.operator_default()
    assert default.allows("team-a", "get", "team-a/db")
    assert default.allows("team-a", "get", "team-a/deep/path")
    assert not default.allows("team-a", "get", "team-b/db")
    assert not default.allows("team-a", "get", "team-ab/db")


def test_filter_paths() -> None:
    policy = Policy.parse(POLICY)
    paths = ["team-a/db", "team-b/db", "shared/tls/web", "shared/other"]
    assert policy.filter_paths("team-a", "list", paths, "app") == ["team-a/db", "shared/tls/web"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rules: {}", "must be a list"),
        ("- a\n- b", "mapping"),
        ("rules: [{namespaces: [a], paths: [x], verbs: [fly]}]", "unknown verb"),
        ("rules: [{namespaces: [a], paths: [x]}]", "'verbs' is required"),
        ("rules: [{namespaces: [a], paths: [x], verbs: [get], extra: 1}]", "unknown field"),
        ("rules: [{namespaces: [], paths: [x], verbs: [get]}]", "non-empty list"),
        ("rules: [{namespaces: [a], paths: [../x], verbs: [get]}]", "not a valid pattern"),
        ("other: 1", "unknown top-level"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_bad_policies_are_refused_clearly(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        Policy.parse(text)


def test_unknown_verb_in_question_is_an_error() -> None:
    with pytest.raises(InvalidArgument):
        Policy.deny_all().allows("a", "steal", "x")


def test_policy_file_reloads_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    source = PolicyFile(str(path))
    assert source.current().allows("team-a", "get", "team-a/db", "x")

    path.write_text("rules: [{namespaces: [team-b], paths: ['team-b/**'], verbs: [get]}]\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert not source.current().allows("team-a", "get", "team-a/db", "x")
    assert source.current().allows("team-b", "get", "team-b/db", "x")

    path.write_text("rules: [")  # a typo keeps the last good policy in force
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert source.current().allows("team-b", "get", "team-b/db", "x")
    assert source.last_error is not None and "not valid YAML" in source.last_error


def test_policy_file_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: 3")
    with pytest.raises(InvalidArgument):
        PolicyFile(str(path))


def test_missing_policy_file_denies(tmp_path: Path) -> None:
    source = PolicyFile(str(tmp_path / "absent.yaml"))
    assert not source.current().allows("a", "get", "a/x", "sa")
