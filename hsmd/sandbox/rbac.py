"""RBAC evaluation for SubjectAccessReview (the sandbox authenticates requests but does not
authorize them; a component that asks "may X do Y?" gets the answer the RBAC objects stored in
the sandbox give, as on a real cluster).
"""

from __future__ import annotations

from typing import Any, Protocol

from hsmd.sandbox.auth import UserInfo


class _Store(Protocol):
    def list_objects(self, key: str, namespace: str | None) -> tuple[list[Any], int]: ...
    def get(self, key: str, namespace: str, name: str) -> Any: ...


RBAC = "rbac.authorization.k8s.io"


def _subject_matches(subject: dict[str, Any], user: UserInfo) -> bool:
    kind = subject.get("kind")
    name = subject.get("name")
    if kind == "User":
        return bool(name == user.username)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        return user.username == f"system:serviceaccount:{subject.get('namespace', '')}:{name}"
    return False


def _has(values: list[str] | None, want: str) -> bool:
    return bool(values) and ("*" in values or want in values)  # type: ignore[operator]


def _rule_allows(rule: dict[str, Any], attrs: dict[str, Any], resource_request: bool) -> bool:
    verb = attrs.get("verb", "")
    if not _has(rule.get("verbs"), verb):
        return False
    if not resource_request:
        path = attrs.get("path", "")
        for url in rule.get("nonResourceURLs") or []:
            if url == path or url == "*" or (url.endswith("*") and path.startswith(url[:-1])):
                return True
        return False
    if not _has(rule.get("apiGroups"), attrs.get("group", "")):
        return False
    resource = attrs.get("resource", "")
    sub = attrs.get("subresource", "")
    full = f"{resource}/{sub}" if sub else resource
    resources = rule.get("resources") or []
    if not ("*" in resources or full in resources or (sub and f"*/{sub}" in resources)
            or (not sub and resource in resources)):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.get("name", "") in names


def authorize(store: _Store, user: UserInfo, attrs: dict[str, Any], resource_request: bool) -> tuple[bool, str]:
    """(allowed, reason) for ``user`` doing ``attrs`` (a SubjectAccessReview's attributes)."""
    namespace = attrs.get("namespace", "") if resource_request else ""
    bindings: list[tuple[str, dict[str, Any]]] = [("ClusterRoleBinding", s.obj) for s in
                                                  store.list_objects(f"{RBAC}/clusterrolebindings", None)[0]]
    if namespace:
        bindings += [("RoleBinding", s.obj) for s in store.list_objects(f"{RBAC}/rolebindings", namespace)[0]]
    for binding_kind, binding in bindings:
        subjects = [s for s in binding.get("subjects") or [] if isinstance(s, dict)]
        who = next((s for s in subjects if _subject_matches(s, user)), None)
        if who is None:
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            role = store.get(f"{RBAC}/clusterroles", "", ref.get("name", ""))
        else:
            role = store.get(f"{RBAC}/roles", binding["metadata"].get("namespace", ""), ref.get("name", ""))
        if role is None:
            continue
        for rule in role.obj.get("rules") or []:
            if isinstance(rule, dict) and _rule_allows(rule, attrs, resource_request):
                where = f" in namespace {namespace!r}" if binding_kind == "RoleBinding" else ""
                return True, (f'RBAC: allowed by {binding_kind} "{binding["metadata"]["name"]}{where}" of '
                              f'{ref.get("kind")} "{ref.get("name")}" to {who.get("kind")} "{who.get("name")}"')
    return False, ""


BOOTSTRAP: list[dict[str, Any]] = [
    {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole",
     "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                  "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
     "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
               {"nonResourceURLs": ["*"], "verbs": ["*"]}]},
    {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                  "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
     "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
     "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "system:masters"}]},
]
