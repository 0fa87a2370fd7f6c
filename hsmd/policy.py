"""The access policy: one format, one implementation, enforced by the operator and the broker.

```yaml
rules:
  - namespaces: ["team-a", "payments-*"]   # HSMSecret namespace (operator) or caller namespace (broker)
    serviceAccounts: ["*"]                 # broker only; "*" = any ServiceAccount of those namespaces
    paths: ["team-a/**", "shared/tls/*"]   # "*" within one path segment, "**" any number of segments
    verbs: [get, list]
```

Rules only grant; anything not granted is denied. Without a configured policy the operator lets
an HSMSecret in namespace N sync ``N/**`` only (``Policy.operator_default()``) and the broker
denies everything (``Policy.deny_all()``). ``PolicyFile`` re-reads its file when it changes so
edits apply without a restart; a ConfigMap source feeds ``Policy.parse`` the same text.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import yaml

from hsmd.errors import InvalidArgument

VERBS = ("get", "list", "create", "update", "delete", "import", "export", "rotate-pin")
_RULE_FIELDS = {"namespaces", "serviceAccounts", "paths", "verbs"}
POLICY_CONFIGMAP = "hsm-access-policy"
POLICY_CONFIGMAP_KEY = "policy.yaml"


@lru_cache(maxsize=4096)
def _path_regex(pattern: str) -> re.Pattern[str]:
    segments = pattern.split("/")
    if segments == ["**"]:
        return re.compile(".*")
    out = ""
    for index, segment in enumerate(segments):
        if segment == "**":
            # zero or more whole segments: "a/**" matches "a", "a/x", "a/x/y"; "a/**/b" matches "a/b"
            out += "(?:[^/]+/)*" if index == 0 else "(?:/[^/]+)*"
            continue
        regex = "".join("[^/]*" if ch == "*" else re.escape(ch) for ch in segment)
        joined_by_leading_globstar = index == 1 and segments[0] == "**"
        out += regex if index == 0 or joined_by_leading_globstar else "/" + regex
    return re.compile(out)


def path_matches(pattern: str, path: str) -> bool:
    """``*`` matches within one segment, ``**`` across any number of segments (also none)."""
    return _path_regex(pattern).fullmatch(path) is not None


def _name_matches(patterns: Sequence[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass(frozen=True)
class Rule:
    namespaces: tuple[str, ...]
    service_accounts: tuple[str, ...]
    paths: tuple[str, ...]
    verbs: tuple[str, ...]

    def grants(self, namespace: str, service_account: str | None, verb: str, path: str) -> bool:
        if verb not in self.verbs and "*" not in self.verbs:
            return False
        if not _name_matches(self.namespaces, namespace):
            return False
        if service_account is not None and not _name_matches(self.service_accounts, service_account):
            return False
        return any(path_matches(p, path) for p in self.paths)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]

    @classmethod
    def deny_all(cls) -> Policy:
        return cls(rules=())

    @classmethod
    def operator_default(cls) -> Policy:
        """No policy configured: an HSMSecret in namespace N may sync only ``N/**``."""
        return cls(rules=(_NAMESPACE_OWN_PATHS,))

    @classmethod
    def parse(cls, text: str, *, source: str = "policy") -> Policy:
        try:
            doc = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_dict(doc or {}, source=source)

    @classmethod
    def from_dict(cls, doc: object, *, source: str = "policy") -> Policy:
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{source}: must be a mapping with a 'rules' list")
        unknown = set(doc) - {"rules"}
        if unknown:
            raise InvalidArgument(f"{source}: unknown top-level field(s) {sorted(unknown)}")
        raw_rules = doc.get("rules")
        raw_rules = [] if raw_rules is None else raw_rules
        if not isinstance(raw_rules, list):
            raise InvalidArgument(f"{source}: 'rules' must be a list")
        return cls(rules=tuple(_parse_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(raw_rules)))

    def allows(self, namespace: str, verb: str, path: str, service_account: str | None = None) -> bool:
        """Whether any rule grants ``verb`` on ``path`` to (namespace, service account).

        ``service_account`` None means the operator's question (HSMSecret namespace only)."""
        if verb not in VERBS:
            raise InvalidArgument(f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
        return any(rule.grants(namespace, service_account, verb, path) for rule in self.rules)

    def filter_paths(
        self, namespace: str, verb: str, paths: Iterable[str], service_account: str | None = None
    ) -> list[str]:
        return [p for p in paths if self.allows(namespace, verb, p, service_account)]


class _NamespaceOwnPaths(Rule):
    """The operator default: namespace N gets every verb on N/**."""

    def grants(self, namespace: str, service_account: str | None, verb: str, path: str) -> bool:
        return path_matches(f"{_glob_escape(namespace)}/**", path)


def _glob_escape(name: str) -> str:
    # Namespace names are DNS labels ([a-z0-9-]); nothing in them is special to path_matches.
    return name


_NAMESPACE_OWN_PATHS = _NamespaceOwnPaths(namespaces=("*",), service_accounts=("*",), paths=(), verbs=("*",))


def _string_list(rule: dict[str, object], name: str, where: str, *, default: Sequence[str] | None) -> tuple[str, ...]:
    if name not in rule:
        if default is None:
            raise InvalidArgument(f"{where}: '{name}' is required")
        return tuple(default)
    value = rule[name]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{where}: '{name}' must be a non-empty list of strings")
    return tuple(value)


def _parse_rule(raw: object, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: must be a mapping")
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_RULE_FIELDS)}")
    verbs = _string_list(raw, "verbs", where, default=None)
    bad = [v for v in verbs if v not in VERBS and v != "*"]
    if bad:
        raise InvalidArgument(f"{where}: unknown verb(s) {bad}; known: {', '.join(VERBS)}")
    paths = _string_list(raw, "paths", where, default=None)
    for pattern in paths:
        if pattern.startswith("/") or "//" in pattern or any(s in (".", "..") for s in pattern.split("/")):
            raise InvalidArgument(f"{where}: path pattern {pattern!r} is not a valid pattern")
    return Rule(
        namespaces=_string_list(raw, "namespaces", where, default=None),
        service_accounts=_string_list(raw, "serviceAccounts", where, default=("*",)),
        paths=paths,
        verbs=verbs,
    )


class PolicyFile:
    """A policy read from a file and re-read whenever the file changes (mtime, size or inode).

    A file that becomes invalid keeps the last good policy in force and records the error
    (``last_error``), so a typo never opens or closes everything at once."""

    def __init__(self, path: str, *, missing: Policy | None = None) -> None:
        self.path = path
        self._missing = missing if missing is not None else Policy.deny_all()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._policy: Policy | None = None
        self.last_error: str | None = None
        self.current()  # fail fast on a bad file at start-up
        if self.last_error:
            raise InvalidArgument(self.last_error)

    def current(self) -> Policy:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._policy if self._policy is not None else self._missing
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with open(self.path, encoding="utf-8") as handle:
                        self._policy = Policy.parse(handle.read(), source=self.path)
                    self.last_error = None
                except (OSError, InvalidArgument) as exc:
                    self.last_error = str(exc)
                self._stamp = stamp
            return self._policy if self._policy is not None else self._missing
