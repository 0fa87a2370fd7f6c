"""Per-kind rules kube-apiserver applies on create and update (its "registry strategies"):
defaults, server-set fields, field validation with the real error wording, and what an update of
the main resource or of ``/status`` may change.

Each function is pure over dicts: ``prepare_create``/``prepare_update`` mutate the new object,
``validate`` returns field causes. The API layer (cluster.py) calls them in one place for every
write path (create, update, patch, apply), so the rules cannot differ between verbs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from typing import Any

from hsmd.sandbox import schema as structural
from hsmd.sandbox.resources import ResourceType
from hsmd.sandbox.status import Cause, bad_request

MAX_SECRET_BYTES = 1024 * 1024
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
             "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
             "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
                  "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")
_LABEL_NAME_KINDS = {"namespaces", "services"}
_PATH_SEGMENT_KINDS = {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}


# --- metadata ---------------------------------------------------------------------------


def validate_name(rt: ResourceType, name: str, field: str = "metadata.name") -> list[Cause]:
    if rt.plural in _PATH_SEGMENT_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            return [Cause("FieldValueInvalid", field, "may not contain '/' or '%'" if name not in (".", "..")
                          else f"may not be '{name}'", name)]
        return []
    if rt.plural in _LABEL_NAME_KINDS:
        if len(name) > 63:
            return [Cause("FieldValueInvalid", field, "must be no more than 63 characters", name)]
        if not DNS1123_LABEL.match(name):
            return [Cause("FieldValueInvalid", field, LABEL_MSG, name)]
        return []
    if len(name) > 253:
        return [Cause("FieldValueInvalid", field, "must be no more than 253 characters", name)]
    if not DNS1123_SUBDOMAIN.match(name):
        return [Cause("FieldValueInvalid", field, SUBDOMAIN_MSG, name)]
    return []


def _qualified_name_errors(key: str, field: str) -> list[Cause]:
    prefix, slash, name = key.rpartition("/")
    errs: list[Cause] = []
    if slash and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errs.append(Cause("FieldValueInvalid", field, "prefix part " + SUBDOMAIN_MSG, key))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errs.append(Cause("FieldValueInvalid", field,
                          "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                          "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
                          "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')", key))
    return errs


def validate_metadata(rt: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [Cause("FieldValueRequired", "metadata")]
    errs: list[Cause] = []
    name = meta.get("name")
    if not name:
        errs.append(Cause("FieldValueRequired", "metadata.name", "name or generateName is required"))
    elif isinstance(name, str):
        errs += validate_name(rt, name)
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, dict):
        errs.append(Cause("FieldValueTypeInvalid", "metadata.labels", "must be a map", labels))
    for key, value in (labels or {}).items():
        errs += _qualified_name_errors(key, "metadata.labels")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errs.append(Cause("FieldValueInvalid", "metadata.labels",
                              "a valid label must be an empty string or consist of alphanumeric characters, '-', "
                              "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  "
                              "or 'my_value',  or '12345', regex used for validation is "
                              "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')", value))
    annotations = meta.get("annotations")
    total = 0
    for key, value in (annotations or {}).items():
        errs += [Cause(c.reason, "metadata.annotations", c.detail, c.value)
                 for c in _qualified_name_errors(key.lower(), "metadata.annotations")]
        if not isinstance(value, str):
            errs.append(Cause("FieldValueTypeInvalid", f"metadata.annotations[{key}]", "must be a string", value))
        else:
            total += len(key) + len(value)
    if total > 256 * 1024:
        errs.append(Cause("FieldValueTooLong", "metadata.annotations", "may not be more than 262144 bytes", total))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        base = f"metadata.ownerReferences[{i}]"
        for f in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref, dict) or not ref.get(f):
                errs.append(Cause("FieldValueInvalid", f"{base}.{f}", f"{f} must not be empty", ""))
    controllers = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("controller")]
    if len(controllers) > 1:
        errs.append(Cause("FieldValueInvalid", "metadata.ownerReferences",
                          "Only one reference can have Controller set to true", meta["ownerReferences"]))
    for i, fin in enumerate(meta.get("finalizers") or []):
        if not isinstance(fin, str) or not fin:
            errs.append(Cause("FieldValueInvalid", f"metadata.finalizers[{i}]", "name part must be non-empty", fin))
        elif "/" not in fin and fin not in ("kubernetes", "orphan", "foregroundDeletion"):
            errs.append(Cause("FieldValueInvalid", f"metadata.finalizers[{i}]",
                              "name is neither a standard finalizer name nor is it fully qualified", fin))
    return errs


# --- per-kind create/update preparation ---------------------------------------------------


def _b64(value: Any, kind: str) -> bytes:
    if not isinstance(value, str):
        raise bad_request(f"{kind} in version \"v1\" cannot be handled as a {kind}: json: cannot unmarshal "
                          f"{type(value).__name__} into Go struct field {kind}.data of type []uint8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pos = next((i for i, ch in enumerate(value) if not re.match(r"[A-Za-z0-9+/=]", ch)), len(value) // 4 * 4)
        raise bad_request(f"{kind} in version \"v1\" cannot be handled as a {kind}: illegal base64 data at input "
                          f"byte {pos}") from None


def _normalize_secret(obj: dict[str, Any]) -> None:
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        raise bad_request("Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal into "
                          "Go struct field Secret.data of type map[string][]uint8")
    data = dict(data or {})
    for value in data.values():
        _b64(value, "Secret")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        for key, value in string_data.items():
            if not isinstance(value, str):
                raise bad_request("Secret in version \"v1\" cannot be handled as a Secret: json: cannot unmarshal "
                                  "into Go struct field Secret.stringData of type string")
            data[key] = base64.b64encode(value.encode()).decode()
    if data:
        obj["data"] = data
    else:
        obj.pop("data", None)
    if not obj.get("type"):
        obj["type"] = "Opaque"


def _validate_secret(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    errs: list[Cause] = []
    data = obj.get("data") or {}
    total = 0
    for key, value in data.items():
        if not CONFIG_KEY.match(key) or len(key) > 253:
            errs.append(Cause("FieldValueInvalid", f"data[{key}]", CONFIG_KEY_MSG, key))
        total += len(base64.b64decode(value))
    if total > MAX_SECRET_BYTES:
        errs.append(Cause("FieldValueTooLong", "data", f"may not be more than {MAX_SECRET_BYTES} bytes", total))
    stype = obj.get("type")
    required = {"kubernetes.io/tls": ("tls.crt", "tls.key"), "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
                "kubernetes.io/dockercfg": (".dockercfg",), "kubernetes.io/ssh-auth": ("ssh-privatekey",)}
    for key in required.get(stype or "", ()):
        if key not in data:
            errs.append(Cause("FieldValueRequired", f"data[{key}]"))
    if stype == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" in data:
        try:
            json.loads(base64.b64decode(data[".dockerconfigjson"]))
        except ValueError as exc:
            errs.append(Cause("FieldValueInvalid", "data[.dockerconfigjson]", str(exc), "<secret contents redacted>"))
    if stype == "kubernetes.io/service-account-token":
        ann = obj["metadata"].get("annotations") or {}
        if not ann.get("kubernetes.io/service-account.name"):
            errs.append(Cause("FieldValueRequired", "metadata.annotations[kubernetes.io/service-account.name]"))
    if old is not None:
        if old.get("type") != stype:
            errs.append(Cause("FieldValueInvalid", "type", "field is immutable", stype))
        errs += _immutable_data(obj, old, ("data",))
    return errs


def _immutable_data(obj: dict[str, Any], old: dict[str, Any], fields: tuple[str, ...]) -> list[Cause]:
    errs: list[Cause] = []
    if old.get("immutable"):
        if not obj.get("immutable"):
            errs.append(Cause("FieldValueForbidden", "immutable", "field is immutable when `immutable` is set"))
        for f in fields:
            if (obj.get(f) or {}) != (old.get(f) or {}):
                errs.append(Cause("FieldValueForbidden", f, "field is immutable when `immutable` is set"))
    return errs


def _validate_configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    errs: list[Cause] = []
    total = 0
    data = obj.get("data") or {}
    binary = obj.get("binaryData") or {}
    for key, value in data.items():
        if not CONFIG_KEY.match(key):
            errs.append(Cause("FieldValueInvalid", f"data[{key}]", CONFIG_KEY_MSG, key))
        if not isinstance(value, str):
            raise bad_request("ConfigMap in version \"v1\" cannot be handled as a ConfigMap: json: cannot "
                              "unmarshal into Go struct field ConfigMap.data of type string")
        total += len(key) + len(value.encode())
    for key, value in binary.items():
        if not CONFIG_KEY.match(key):
            errs.append(Cause("FieldValueInvalid", f"binaryData[{key}]", CONFIG_KEY_MSG, key))
        if key in data:
            errs.append(Cause("FieldValueInvalid", f"binaryData[{key}]", "duplicate of key present in data", key))
        total += len(key) + len(_b64(value, "ConfigMap"))
    if total > MAX_SECRET_BYTES:
        errs.append(Cause("FieldValueTooLong", "", f"may not be more than {MAX_SECRET_BYTES} bytes", total))
    if old is not None:
        errs += _immutable_data(obj, old, ("data", "binaryData"))
    return errs


def _pod_spec_defaults(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        image = str(c.get("image", ""))
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        c.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") and "@" not in image else "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def _validate_pod_spec(spec: Any, field: str) -> list[Cause]:
    if not isinstance(spec, dict):
        return [Cause("FieldValueRequired", field)]
    errs: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        errs.append(Cause("FieldValueRequired", f"{field}.containers"))
    names: set[str] = set()
    for i, c in enumerate(containers or []):
        base = f"{field}.containers[{i}]"
        if not isinstance(c, dict):
            errs.append(Cause("FieldValueInvalid", base, "must be an object", c))
            continue
        name = c.get("name")
        if not name:
            errs.append(Cause("FieldValueRequired", f"{base}.name"))
        elif not DNS1123_LABEL.match(name):
            errs.append(Cause("FieldValueInvalid", f"{base}.name", LABEL_MSG, name))
        elif name in names:
            errs.append(Cause("FieldValueDuplicate", f"{base}.name", "", name))
        else:
            names.add(name)
        if not c.get("image"):
            errs.append(Cause("FieldValueRequired", f"{base}.image"))
    return errs


_SERVICE_IPS: dict[int, int] = {}


def _allocate_cluster_ip(used: set[str]) -> str:
    net = ipaddress.ip_network("10.96.0.0/12")
    for offset in range(10, net.num_addresses - 1):
        ip = str(net.network_address + offset)
        if ip not in used:
            return ip
    raise bad_request("no more cluster IPs")


def _workload_defaults(obj: dict[str, Any], kind: str) -> None:
    spec = obj.setdefault("spec", {})
    if kind in ("deployments", "statefulsets", "replicasets"):
        spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    if kind == "deployments":
        spec.setdefault("strategy", {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        spec.setdefault("progressDeadlineSeconds", 600)
    elif kind == "daemonsets":
        spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        tspec = template.get("spec")
        if isinstance(tspec, dict):
            _pod_spec_defaults(tspec)


def _validate_workload(obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    from hsmd.sandbox.selectors import selector_from_label_selector

    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [Cause("FieldValueRequired", "spec")]
    errs: list[Cause] = []
    selector = spec.get("selector")
    if not selector:
        errs.append(Cause("FieldValueRequired", "spec.selector"))
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if selector:
        match = selector_from_label_selector(selector)
        if not (selector.get("matchLabels") or selector.get("matchExpressions")):
            errs.append(Cause("FieldValueInvalid", "spec.selector", "empty selector is invalid for deployment",
                              selector))
        elif match is not None and not match(labels):
            errs.append(Cause("FieldValueInvalid", "spec.template.metadata.labels",
                              "`selector` does not match template `labels`", labels))
    errs += _validate_pod_spec(template.get("spec"), "spec.template.spec")
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        errs.append(Cause("FieldValueInvalid", "spec.replicas", "must be greater than or equal to 0", replicas))
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        errs.append(Cause("FieldValueInvalid", "spec.selector", "field is immutable", selector))
    return errs


def prepare_create(rt: ResourceType, obj: dict[str, Any], *, used_cluster_ips: set[str] | None = None) -> None:
    """Defaults and server-set fields of a new object (before validation)."""
    plural = rt.plural if not rt.group or rt.group in ("apps", "batch") else f"{rt.plural}.{rt.group}"
    if rt.status_subresource and plural not in ("namespaces", "customresourcedefinitions.apiextensions.k8s.io"):
        obj.pop("status", None)  # status is written through /status only
    if plural == "secrets":
        _normalize_secret(obj)
    elif plural == "namespaces":
        meta = obj["metadata"]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif plural == "pods":
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            _pod_spec_defaults(spec)
            spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
            spec.setdefault("serviceAccount", spec["serviceAccountName"])
            spec.setdefault("enableServiceLinks", True)
            spec.setdefault("priority", 0)
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif plural == "services":
        spec = obj.setdefault("spec", {})
        if isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if spec["type"] != "ExternalName":
                if not spec.get("clusterIP"):
                    spec["clusterIP"] = _allocate_cluster_ip(used_cluster_ips or set())
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            for p in spec.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
                    if "port" in p:
                        p.setdefault("targetPort", p["port"])
        obj["status"] = {"loadBalancer": {}}
    elif plural in ("deployments", "daemonsets", "statefulsets", "replicasets"):
        _workload_defaults(obj, plural)
        obj["status"] = {}
    elif plural == "customresourcedefinitions.apiextensions.k8s.io":
        _crd_defaults(obj)


def prepare_update(rt: ResourceType, new: dict[str, Any], old: dict[str, Any], subresource: str) -> None:
    """Restrict what an update may change: /status changes only status; the main resource never
    changes status when the kind has the subresource; server-owned metadata is kept."""
    new_meta = new.setdefault("metadata", {})
    old_meta = old["metadata"]
    for key in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds",
                "namespace", "name", "selfLink"):
        if key in old_meta:
            new_meta[key] = old_meta[key]
        else:
            new_meta.pop(key, None)
    if subresource == "status":
        for key in [k for k in new if k not in ("apiVersion", "kind", "metadata", "status")]:
            del new[key]
        for key, value in old.items():
            if key not in ("metadata", "status"):
                new[key] = copy.deepcopy(value)
        for key in ("labels", "annotations", "finalizers", "ownerReferences"):
            if key in old_meta:
                new_meta[key] = copy.deepcopy(old_meta[key])
            else:
                new_meta.pop(key, None)
        return
    if rt.status_subresource:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    if rt.plural == "secrets" and not rt.group:
        _normalize_secret(new)
    elif rt.plural == "namespaces" and not rt.group:
        new["spec"] = copy.deepcopy(old.get("spec", {})) if subresource != "finalize" else new.get("spec", {})
        new_meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = old_meta["name"]
    elif rt.plural in ("deployments", "daemonsets", "statefulsets", "replicasets") and rt.group == "apps":
        _workload_defaults(new, rt.plural)
    elif rt.plural == "services" and not rt.group:
        spec = new.setdefault("spec", {})
        old_spec = old.get("spec") or {}
        if isinstance(spec, dict) and not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
            spec.setdefault("clusterIPs", old_spec.get("clusterIPs", [old_spec["clusterIP"]]))
    elif rt.plural == "pods" and not rt.group:
        spec = new.get("spec")
        if isinstance(spec, dict):
            _pod_spec_defaults(spec)
    elif rt.plural == "customresourcedefinitions":
        _crd_defaults(new)


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    errs = validate_metadata(rt, obj)
    if rt.crd is not None:
        return errs
    g, p = rt.group, rt.plural
    if not g and p == "secrets":
        errs += _validate_secret(obj, old)
    elif not g and p == "configmaps":
        errs += _validate_configmap(obj, old)
    elif not g and p == "pods":
        errs += _validate_pod_spec(obj.get("spec"), "spec")
    elif g == "apps" and p in ("deployments", "daemonsets", "statefulsets", "replicasets"):
        errs += _validate_workload(obj, old)
    elif g == "coordination.k8s.io" and p == "leases":
        spec = obj.get("spec") or {}
        dur = spec.get("leaseDurationSeconds")
        if dur is not None and (not isinstance(dur, int) or dur <= 0):
            errs.append(Cause("FieldValueInvalid", "spec.leaseDurationSeconds", "must be greater than 0", dur))
        trans = spec.get("leaseTransitions")
        if trans is not None and (not isinstance(trans, int) or trans < 0):
            errs.append(Cause("FieldValueInvalid", "spec.leaseTransitions", "must be greater than or equal to 0",
                              trans))
    elif not g and p == "services":
        spec = obj.get("spec") or {}
        for i, port in enumerate(spec.get("ports") or []):
            num = port.get("port") if isinstance(port, dict) else None
            if not isinstance(num, int) or not 0 < num < 65536:
                errs.append(Cause("FieldValueInvalid", f"spec.ports[{i}].port",
                                  "must be between 1 and 65535, inclusive", num))
        if old is not None and (old.get("spec") or {}).get("clusterIP") not in (None, "", spec.get("clusterIP")):
            errs.append(Cause("FieldValueInvalid", "spec.clusterIPs[0]", "may not change once set",
                              spec.get("clusterIP")))
    elif g == "rbac.authorization.k8s.io" and p in ("rolebindings", "clusterrolebindings"):
        ref = obj.get("roleRef")
        if not isinstance(ref, dict) or not ref.get("name"):
            errs.append(Cause("FieldValueRequired", "roleRef.name"))
        elif ref.get("kind") not in ("Role", "ClusterRole"):
            errs.append(Cause("FieldValueNotSupported", "roleRef.kind", 'supported values: "Role", "ClusterRole"',
                              ref.get("kind")))
        if old is not None and old.get("roleRef") != ref:
            errs.append(Cause("FieldValueInvalid", "roleRef", "cannot change roleRef", ref))
    elif g == "apiextensions.k8s.io" and p == "customresourcedefinitions":
        errs += validate_crd(obj, old)
    elif not g and p == "events":
        inv = obj.get("involvedObject")
        if not isinstance(inv, dict):
            errs.append(Cause("FieldValueRequired", "involvedObject"))
    return errs


# --- CustomResourceDefinitions ------------------------------------------------------------


def _crd_defaults(crd: dict[str, Any]) -> None:
    spec = crd.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    names = spec.setdefault("names", {})
    if isinstance(names, dict) and names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    for v in spec.get("versions") or []:
        if isinstance(v, dict):
            v.setdefault("served", True)
            v.setdefault("storage", False)


def validate_crd(crd: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [Cause("FieldValueRequired", "spec")]
    errs: list[Cause] = []
    group = spec.get("group") or ""
    names = spec.get("names") or {}
    plural = names.get("plural") or ""
    name = crd.get("metadata", {}).get("name", "")
    if not group:
        errs.append(Cause("FieldValueRequired", "spec.group"))
    elif "." not in group:
        errs.append(Cause("FieldValueInvalid", "spec.group", "should be a domain with at least one dot", group))
    if not plural:
        errs.append(Cause("FieldValueRequired", "spec.names.plural"))
    elif not DNS1123_LABEL.match(plural):
        errs.append(Cause("FieldValueInvalid", "spec.names.plural", LABEL_MSG, plural))
    if not names.get("kind"):
        errs.append(Cause("FieldValueRequired", "spec.names.kind"))
    if plural and group and name != f"{plural}.{group}":
        errs.append(Cause("FieldValueInvalid", "metadata.name", "must be spec.names.plural+\".\"+spec.group", name))
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        errs.append(Cause("FieldValueNotSupported" if scope else "FieldValueRequired", "spec.scope",
                          'supported values: "Cluster", "Namespaced"' if scope else "", scope))
    versions = spec.get("versions") or []
    if not versions:
        errs.append(Cause("FieldValueInvalid", "spec.versions", "must have exactly one version marked as storage "
                          "version", versions))
    else:
        storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
        if len(storage) != 1:
            errs.append(Cause("FieldValueInvalid", "spec.versions", "must have exactly one version marked as "
                              "storage version", [v.get("name") for v in storage]))
        seen: set[str] = set()
        for i, v in enumerate(versions):
            if not isinstance(v, dict) or not v.get("name"):
                errs.append(Cause("FieldValueRequired", f"spec.versions[{i}].name"))
                continue
            if v["name"] in seen:
                errs.append(Cause("FieldValueDuplicate", f"spec.versions[{i}].name", "", v["name"]))
            seen.add(v["name"])
            errs += structural.check_structural((v.get("schema") or {}).get("openAPIV3Schema"),
                                                f"spec.versions[{i}].schema.openAPIV3Schema")
    if old is not None:
        old_spec = old.get("spec") or {}
        if old_spec.get("scope") != scope:
            errs.append(Cause("FieldValueInvalid", "spec.scope", "field is immutable", scope))
        if old_spec.get("group") != group:
            errs.append(Cause("FieldValueInvalid", "spec.group", "field is immutable", group))
        if (old_spec.get("names") or {}).get("plural") != plural:
            errs.append(Cause("FieldValueInvalid", "spec.names.plural", "field is immutable", plural))
    return errs


def crd_status(crd: dict[str, Any], now: str) -> dict[str, Any]:
    spec = crd["spec"]
    names = spec["names"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    accepted = {k: v for k, v in names.items()}
    return {
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    }
