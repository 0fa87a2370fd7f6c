"""The sandbox's resource catalogue: what each kind is (group, versions, plural, scope, verbs,
subresources, short names) and the per-kind behaviour flags the API layer consults.

Built-in kinds are declared here once; CustomResourceDefinitions become ``ResourceType``s at run
time (``from_crd``). Discovery documents are generated from the same objects, so what the server
advertises and what it serves cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
NO_COLLECTION_DELETE = ("create", "delete", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclass
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass
class ResourceType:
    """One servable resource (all its versions share one storage key)."""

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "token", "finalize", "scale"
    has_generation: bool = False
    allow_unconditional_update: bool = True
    return_deleted_object: bool = False
    strategic_merge: bool = True  # built-ins accept strategic-merge-patch; custom resources do not
    storage_version: str = ""
    field_selectors: tuple[str, ...] = ()  # beyond metadata.name / metadata.namespace
    virtual: bool = False  # create-only review kinds (TokenReview...): nothing stored
    crd: CRDInfo | None = None
    printer_columns: dict[str, list[PrinterColumn]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.storage_version:
            self.storage_version = self.versions[0]

    @property
    def key(self) -> str:
        """Storage key: group/plural (the version is a view, not a separate store)."""
        return f"{self.group}/{self.plural}"

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str | None = None) -> str:
        v = version or self.storage_version
        return f"{self.group}/{v}" if self.group else v

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def status_subresource(self) -> bool:
        return "status" in self.subresources

    def discovery_entries(self, version: str) -> list[dict[str, Any]]:
        """APIResource entries for /api/v1 or /apis/{g}/{v}: the resource, then its subresources."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        if not self.virtual:
            main["storageVersionHash"] = _hash(self.key + self.storage_version)
        entries = [main]
        for sub in self.subresources:
            if sub == "status":
                entries.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                                "kind": self.kind, "verbs": ["get", "patch", "update"]})
            elif sub == "token":
                entries.append({"name": f"{self.plural}/token", "singularName": "", "namespaced": self.namespaced,
                                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                                "verbs": ["create"]})
            elif sub == "finalize":
                entries.append({"name": f"{self.plural}/finalize", "singularName": "",
                                "namespaced": self.namespaced, "kind": self.kind, "verbs": ["update"]})
            elif sub == "scale":
                entries.append({"name": f"{self.plural}/scale", "singularName": "", "namespaced": self.namespaced,
                                "group": "autoscaling", "version": "v1", "kind": "Scale",
                                "verbs": ["get", "patch", "update"]})
        return entries


@dataclass
class CRDInfo:
    """What a CustomResourceDefinition adds to a ResourceType: per-version schemas and columns."""

    name: str
    uid: str
    schemas: dict[str, dict[str, Any]]  # version -> openAPIV3Schema
    served: tuple[str, ...]
    selectable_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scale: dict[str, str] | None = None  # subresources.scale of the storage version


def _hash(text: str) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(text.encode()).digest()[:8]).decode()


def _t(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    singular = kw.pop("singular", kind.lower())
    return ResourceType(group=group, versions=(version,), plural=plural, singular=singular, kind=kind,
                        namespaced=namespaced, **kw)


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


def builtin_types() -> list[ResourceType]:
    """The built-in kinds the project (and kubernetes.core, kubectl, leader election) relies on."""
    cols = {
        "namespaces": [PrinterColumn("Status", "string", ".status.phase"), _AGE],
        "secrets": [PrinterColumn("Type", "string", ".type"), PrinterColumn("Data", "integer", ".data@count"), _AGE],
        "configmaps": [PrinterColumn("Data", "integer", ".data@count"), _AGE],
        "serviceaccounts": [_AGE],
        "pods": [PrinterColumn("Status", "string", ".status.phase"), _AGE],
        "services": [PrinterColumn("Type", "string", ".spec.type"),
                     PrinterColumn("Cluster-IP", "string", ".spec.clusterIP"), _AGE],
        "deployments": [PrinterColumn("Ready", "string", ".status.readyReplicas@ofspec"),
                        PrinterColumn("Up-to-date", "integer", ".status.updatedReplicas"),
                        PrinterColumn("Available", "integer", ".status.availableReplicas"), _AGE],
        "leases": [PrinterColumn("Holder", "string", ".spec.holderIdentity"), _AGE],
        "customresourcedefinitions": [PrinterColumn("Created At", "date", ".metadata.creationTimestamp")],
        "events": [PrinterColumn("Type", "string", ".type"), PrinterColumn("Reason", "string", ".reason"),
                   PrinterColumn("Object", "string", ".involvedObject.name"),
                   PrinterColumn("Message", "string", ".message")],
    }
    types = [
        _t("", "v1", "namespaces", "Namespace", False, short_names=("ns",), subresources=("status", "finalize"),
           verbs=NO_COLLECTION_DELETE, return_deleted_object=True, field_selectors=("status.phase",)),
        _t("", "v1", "secrets", "Secret", field_selectors=("type",)),
        _t("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
        _t("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",), subresources=("token",)),
        _t("", "v1", "pods", "Pod", short_names=("po",), categories=("all",), subresources=("status",),
           return_deleted_object=True,
           field_selectors=("spec.nodeName", "spec.serviceAccountName", "status.phase", "spec.restartPolicy",
                            "spec.schedulerName", "status.podIP", "status.nominatedNodeName")),
        _t("", "v1", "services", "Service", short_names=("svc",), categories=("all",), subresources=("status",)),
        _t("", "v1", "endpoints", "Endpoints", short_names=("ep",), singular="endpoints"),
        _t("", "v1", "events", "Event", short_names=("ev",),
           field_selectors=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                            "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                            "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")),
        _t("", "v1", "nodes", "Node", False, short_names=("no",), subresources=("status",),
           field_selectors=("spec.unschedulable",)),
        _t("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",),
           subresources=("status",)),
        _t("", "v1", "resourcequotas", "ResourceQuota", short_names=("quota",), subresources=("status",)),
        _t("", "v1", "limitranges", "LimitRange", short_names=("limits",)),
        _t("apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",),
           subresources=("status", "scale"), has_generation=True),
        _t("apps", "v1", "daemonsets", "DaemonSet", short_names=("ds",), categories=("all",),
           subresources=("status",), has_generation=True),
        _t("apps", "v1", "statefulsets", "StatefulSet", short_names=("sts",), categories=("all",),
           subresources=("status", "scale"), has_generation=True),
        _t("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",), categories=("all",),
           subresources=("status", "scale"), has_generation=True),
        _t("batch", "v1", "jobs", "Job", categories=("all",), subresources=("status",), has_generation=True),
        _t("batch", "v1", "cronjobs", "CronJob", short_names=("cj",), categories=("all",),
           subresources=("status",), has_generation=True),
        _t("coordination.k8s.io", "v1", "leases", "Lease"),
        _t("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        _t("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        _t("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        _t("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        _t("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",),
           has_generation=True),
        _t("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",), subresources=("status",)),
        _t("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",),
           subresources=("status",), has_generation=True),
        _t("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
           short_names=("crd", "crds"), categories=("api-extensions",), subresources=("status",),
           has_generation=True),
        _t("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=CREATE_ONLY, virtual=True),
        _t("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", False, verbs=CREATE_ONLY,
           virtual=True),
        _t("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", False,
           verbs=CREATE_ONLY, virtual=True),
        _t("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
           verbs=CREATE_ONLY, virtual=True),
        _t("authorization.k8s.io", "v1", "localsubjectaccessreviews", "LocalSubjectAccessReview", True,
           verbs=CREATE_ONLY, virtual=True),
    ]
    for rt in types:
        if rt.plural in cols:
            rt.printer_columns = {rt.versions[0]: cols[rt.plural]}
    return types


def from_crd(crd: dict[str, Any]) -> ResourceType:
    """A ResourceType for an (already validated) apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec = crd["spec"]
    names = spec["names"]
    versions = spec["versions"]
    served = tuple(v["name"] for v in versions if v.get("served", True))
    storage = next(v["name"] for v in versions if v.get("storage"))
    subresources: list[str] = []
    schemas: dict[str, dict[str, Any]] = {}
    columns: dict[str, list[PrinterColumn]] = {}
    selectable: dict[str, tuple[str, ...]] = {}
    has_status = False
    has_scale = False
    scale: dict[str, str] | None = None
    for v in versions:
        sub = v.get("subresources") or {}
        if v["name"] == storage or not has_status:
            has_status = has_status or "status" in sub
            has_scale = has_scale or "scale" in sub
        if isinstance(sub.get("scale"), dict) and (scale is None or v["name"] == storage):
            scale = sub["scale"]
        schemas[v["name"]] = (v.get("schema") or {}).get("openAPIV3Schema") or {}
        cols = [PrinterColumn(c["name"], c.get("type", "string"), c["jsonPath"], c.get("description", ""),
                              int(c.get("priority", 0)), c.get("format", ""))
                for c in v.get("additionalPrinterColumns") or []]
        columns[v["name"]] = cols + ([] if any(c.name == "Age" for c in cols) else [_AGE])
        selectable[v["name"]] = tuple(s["jsonPath"].lstrip(".") for s in v.get("selectableFields") or [])
    if has_status:
        subresources.append("status")
    if has_scale:
        subresources.append("scale")
    # served versions first (preferred = the first served version, as the real server orders by priority)
    ordered = tuple(sorted(served, key=_version_priority))
    return ResourceType(
        group=spec["group"], versions=ordered, plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(), kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced", verbs=ALL_VERBS,
        short_names=tuple(names.get("shortNames") or ()), categories=tuple(names.get("categories") or ()),
        subresources=tuple(subresources), has_generation=True, allow_unconditional_update=False,
        return_deleted_object=True, strategic_merge=False, storage_version=storage,
        crd=CRDInfo(name=crd["metadata"]["name"], uid=crd["metadata"].get("uid", ""), schemas=schemas,
                    served=served, selectable_fields=selectable, scale=scale),
        printer_columns=columns,
    )


def _version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first, then others by name."""
    import re

    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not m:
        return (3, 0, 0, version)
    major = int(m.group(1))
    level = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (level, -major, -minor, version)


class Registry:
    """All servable types, indexed the ways requests and discovery look them up."""

    def __init__(self) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        self._by_key: dict[str, ResourceType] = {}
        self.generation = 0  # bumped on every change (discovery responses are cached per generation)
        self._groups: tuple[int, dict[str, list[str]]] = (-1, {})

    # Writers (CRD registration, under the store lock) build new dicts and swap them in, so readers
    # on request threads never iterate a dict that is being changed.

    def add(self, rt: ResourceType) -> None:
        by_key = dict(self._by_key)
        by_gvr = {k: v for k, v in self._by_gvr.items() if v.key != rt.key}
        by_key[rt.key] = rt
        for v in rt.versions:
            by_gvr[(rt.group, v, rt.plural)] = rt
        self._by_key, self._by_gvr = by_key, by_gvr
        self.generation += 1

    def remove(self, rt: ResourceType) -> None:
        by_key = {k: v for k, v in self._by_key.items() if v is not rt}
        by_gvr = {k: v for k, v in self._by_gvr.items() if v is not rt}
        self._by_key, self._by_gvr = by_key, by_gvr
        self.generation += 1

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvr.get((group, version, plural))

    def by_key(self, key: str) -> ResourceType | None:
        return self._by_key.get(key)

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._by_key.values():
            if rt.group == group and rt.kind == kind and version in rt.versions:
                return rt
        return None

    def all(self) -> list[ResourceType]:
        return list(self._by_key.values())

    def groups(self) -> dict[str, list[str]]:
        """group -> served versions in preference order (core group under ""); cached per generation."""
        generation, cached = self._groups
        if generation == self.generation:
            return cached
        out: dict[str, list[str]] = {}
        for rt in self._by_key.values():
            versions = out.setdefault(rt.group, [])
            for v in rt.versions:
                if v not in versions:
                    versions.append(v)
        for g, versions in out.items():
            out[g] = sorted(versions, key=_version_priority)
        self._groups = (self.generation, out)
        return out

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._by_key.values() if rt.group == group and version in rt.versions]
