"""The sandbox's API semantics, independent of HTTP: verbs on resources, the write pipeline every
verb shares, and the controllers a real cluster runs next to kube-apiserver (garbage collector,
namespace lifecycle, CRD finalizer, ServiceAccount/root-CA publishing).

Write pipeline (create, update, patch, apply, status, delete-with-finalizers all go through it):
decode -> per-kind ``strategies.prepare_*`` -> CRD pruning/defaulting/validation -> per-kind
validation -> generation -> managedFields -> no-op check -> ``Store.put`` (resourceVersion,
history, watchers, journal) -> controller hooks. All of it happens under the store lock, so
resourceVersions are strictly increasing and conflicts are exact.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsmd.sandbox import managed, strategies
from hsmd.sandbox import schema as structural
from hsmd.sandbox.auth import API_AUDIENCES, Authenticator, AuthFailure, UserInfo, load_token_file
from hsmd.sandbox.patch import json_patch, parse_json, strategic_merge
from hsmd.sandbox.rbac import BOOTSTRAP, authorize
from hsmd.sandbox.resources import Registry, ResourceType, builtin_types, from_crd
from hsmd.sandbox.selectors import field_matcher, label_matcher
from hsmd.sandbox.status import (
    Cause,
    StatusError,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    gone,
    invalid,
    not_found,
    success,
    unsupported_media,
)
from hsmd.sandbox.store import ADDED, MODIFIED, Store, Stored, dumps
from hsmd.status import merge_patch

log = logging.getLogger("hsmd.sandbox")

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"
NS_KEY = "/namespaces"
SA_KEY = "/serviceaccounts"
CRD_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-hsmd-sandbox", "gitCommit": "hsmd",
                  "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "python",
                  "compiler": "cpython", "platform": "linux/amd64"}
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml",
               "application/apply-patch+cbor")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Options:
    """Write options shared by create/update/patch/delete (query parameters)."""

    dry_run: bool = False
    field_manager: str = ""
    force: bool = False
    field_validation: str = "Warn"
    warnings: list[str] = field(default_factory=list)  # sent back as Warning headers

    @classmethod
    def from_query(cls, query: dict[str, str], user_agent: str = "") -> Options:
        manager = query.get("fieldManager", "")
        if not manager and user_agent:
            manager = user_agent.split("/")[0][:128]
        validation = query.get("fieldValidation", "Warn") or "Warn"
        if validation not in ("Ignore", "Warn", "Strict"):
            raise bad_request(f'fieldValidation: Unsupported value: "{validation}": supported values: "Ignore", '
                              '"Strict", "Warn"')
        return cls(dry_run=query.get("dryRun") == "All", field_manager=manager,
                   force=query.get("force") in ("true", "1"), field_validation=validation)


class Cluster:
    """Everything a kube-apiserver + kube-controller-manager pair would hold, in one process."""

    def __init__(self, *, state_dir: str | Path | None = None, tokens_file: str | None = None,
                 history_window: int = 10000, admin_token: str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else None
        key_pem: bytes | None = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            key_file = self.state_dir / "sa-signing-key.pem"
            token_file = self.state_dir / "admin-token"
            if key_file.exists():
                key_pem = key_file.read_bytes()
            if admin_token is None and token_file.exists():
                admin_token = token_file.read_text().strip()
        static = load_token_file(tokens_file) if tokens_file else {}
        self.registry = Registry()
        for rt in builtin_types():
            self.registry.add(rt)
        self.store = Store(history_window, self.state_dir / "objects.jsonl" if self.state_dir else None)
        self.auth = Authenticator(key_pem=key_pem, admin_token=admin_token, static_tokens=static,
                                  lookup=self._lookup_plain)
        if self.state_dir is not None:
            key_file = self.state_dir / "sa-signing-key.pem"
            if not key_file.exists():
                key_file.write_bytes(self.auth.key_pem())
                key_file.chmod(0o600)
            token_file = self.state_dir / "admin-token"
            token_file.write_text(self.auth.admin_token)
            token_file.chmod(0o600)
        self._pending: set[tuple[str, ...]] = set()
        self._wake = threading.Condition(self.store.lock)
        self._stopped = False
        with self.store.lock:
            for key, ns, name, stored in list(self.store.all_objects()):
                if key == CRD_KEY and not stored.obj["metadata"].get("deletionTimestamp"):
                    self._register_crd(stored.obj)
                self._hooks(key, ns, name, stored, None)
            for ns_name in DEFAULT_NAMESPACES:
                if self.store.get(NS_KEY, "", ns_name) is None:
                    self._create_internal(self.rt("", "namespaces"), "", {
                        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name}})
            for obj in BOOTSTRAP:
                rt = self.rt("rbac.authorization.k8s.io", "clusterroles" if obj["kind"] == "ClusterRole"
                             else "clusterrolebindings")
                if self.store.get(rt.key, "", obj["metadata"]["name"]) is None:
                    self._create_internal(rt, "", copy.deepcopy(obj))
        self._thread = threading.Thread(target=self._controller_loop, name="sandbox-controllers", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join(timeout=5)
        self.store.close()

    # --- lookups -----------------------------------------------------------------------------

    def rt(self, group: str, plural: str) -> ResourceType:
        found = self.registry.by_key(f"{group}/{plural}")
        assert found is not None, plural
        return found

    def _lookup_plain(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        stored = self.store.get(f"/{plural}", namespace, name)
        return None if stored is None else stored.obj

    def _ns(self, rt: ResourceType, namespace: str) -> str:
        return namespace if rt.namespaced else ""

    def _get_or_404(self, rt: ResourceType, namespace: str, name: str) -> Stored:
        stored = self.store.get(rt.key, self._ns(rt, namespace), name)
        if stored is None:
            raise not_found(rt.plural, rt.group, name)
        return stored

    # --- reads ---------------------------------------------------------------------------

    def get(self, rt: ResourceType, version: str, namespace: str, name: str) -> bytes:
        return self._get_or_404(rt, namespace, name).view(rt.api_version(version))

    def get_obj(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self._get_or_404(rt, namespace, name).obj

    def select(self, rt: ResourceType, namespace: str | None, query: dict[str, str]
               ) -> tuple[list[Stored], int, Callable[[Stored], bool] | None]:
        """Objects matching the list query's selectors (before limit/continue)."""
        labels = label_matcher(query.get("labelSelector"))
        allowed = rt.field_selectors
        if rt.crd is not None:
            allowed = tuple(f for fs in rt.crd.selectable_fields.values() for f in fs)
        fields, exact_name = field_matcher(query.get("fieldSelector"), allowed)
        ns = self._ns(rt, namespace or "") if namespace is not None else None
        if rt.namespaced is False:
            ns = ""
        if exact_name is not None and ns is not None:
            one = self.store.get(rt.key, ns, exact_name)
            items, rv = ([one] if one is not None else []), self.store.rv
        else:
            items, rv = self.store.list_objects(rt.key, ns)

        def match(s: Stored) -> bool:
            if labels is not None and not labels(s.labels):
                return False
            return fields is None or fields(s.obj)

        pred = None if labels is None and fields is None else match
        if pred is not None:
            items = [s for s in items if pred(s)]
        return items, rv, pred

    def list_page(self, rt: ResourceType, namespace: str | None, query: dict[str, str]
                  ) -> tuple[list[Stored], dict[str, Any]]:
        """One page of a list: the items and the list metadata (resourceVersion, continue, remaining)."""
        rv_param = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if match and not rv_param:
            raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match and match not in ("Exact", "NotOlderThan"):
            raise bad_request(f"resourceVersionMatch: Unsupported value: \"{match}\": supported values: "
                              "\"Exact\", \"NotOlderThan\"")
        if rv_param and rv_param != "0":
            want = _parse_rv(rv_param)
            if match == "Exact" and want != self.store.rv:
                raise gone(f"too old resource version: {want} ({self.store.rv})")
            if want > self.store.rv:
                self.wait_for_rv(want)
        items, rv, _ = self.select(rt, namespace, query)
        cont = query.get("continue", "")
        if cont:
            if rv_param:
                raise bad_request("specifying resource version is not allowed when using continue")
            try:
                token = json.loads(base64.b64decode(cont))
                start = (token["ns"], token["n"])
                rv = int(token["rv"])
            except (ValueError, KeyError, TypeError):
                raise bad_request("continue key is not valid: incorrect encoded start resourceVersion "
                                  "(version meta.k8s.io/v1)") from None
            if rv < self.store.compacted:
                raise gone("The provided continue parameter is too old to display a consistent list result. "
                           "You can start a new list without the continue parameter, or use the continue token "
                           "in this response to retrieve the remainder of the results. Continuing with the "
                           "provided token results in an inconsistent list - objects that were created, "
                           "modified, or deleted between the time the first chunk was returned and now may "
                           "show up in the list.")
            items = [s for s in items if (s.obj["metadata"].get("namespace", ""), s.obj["metadata"]["name"]) > start]
        limit = _parse_int(query.get("limit"), "limit")
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and limit > 0 and len(items) > limit:
            last = items[limit - 1].obj["metadata"]
            token = {"v": "meta.k8s.io/v1", "rv": rv, "ns": last.get("namespace", ""), "n": last["name"]}
            meta["continue"] = base64.b64encode(dumps(token)).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return items, meta

    def list_json(self, rt: ResourceType, version: str, namespace: str | None, query: dict[str, str]) -> bytes:
        items, meta = self.list_page(rt, namespace, query)
        api_version = rt.api_version(version)
        head = b'{"kind":%s,"apiVersion":%s,"metadata":%s,"items":[' % (
            dumps(rt.list_kind), dumps(api_version), dumps(meta))
        return head + b",".join(s.view(api_version) for s in items) + b"]}"

    def wait_for_rv(self, want: int, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while self.store.rv < want:
            if time.monotonic() > deadline:
                raise StatusError(504, "Timeout", f"Too large resource version: {want}, current: {self.store.rv}",
                                  {"causes": [{"reason": "ResourceVersionTooLarge",
                                               "message": "Too large resource version"}],
                                   "retryAfterSeconds": 1})
            time.sleep(0.01)

    # --- create ------------------------------------------------------------------------------

    def decode(self, rt: ResourceType, version: str, body: bytes) -> dict[str, Any]:
        obj = parse_json(body)
        if not isinstance(obj, dict):
            raise bad_request(f"the body of the request could not be decoded as a {rt.kind}")
        want = rt.api_version(version)
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if rt.crd is not None and (not kind or not api_version):
            raise bad_request(f"Object 'Kind' is missing in '{body[:200].decode(errors='replace')}'")
        if api_version and api_version != want:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({want})")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"] = want
        obj["kind"] = rt.kind
        meta = obj.get("metadata")
        if meta is None:
            obj["metadata"] = {}
        elif not isinstance(meta, dict):
            raise bad_request(f"{rt.kind} in version \"{version}\" cannot be handled as a {rt.kind}: json: cannot "
                              "unmarshal into Go struct field .metadata of type v1.ObjectMeta")
        return _ordered(obj)

    def create(self, rt: ResourceType, version: str, namespace: str, body: bytes, opts: Options) -> bytes:
        obj = self.decode(rt, version, body)
        meta = obj["metadata"]
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        with self.store.lock:
            stored = self._create_internal(rt, namespace, obj, opts=opts, version=version)
        return stored.view(rt.api_version(version))

    def _create_internal(self, rt: ResourceType, namespace: str, obj: dict[str, Any], *,
                         opts: Options | None = None, version: str = "",
                         managed_fields: list[dict[str, Any]] | None = None) -> Stored:
        opts = opts or Options(field_manager="sandbox-controller")
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"]) + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
        name = meta.get("name") or ""
        ns = self._ns(rt, namespace)
        if rt.namespaced:
            self._check_namespace_open(ns, rt)
        if rt.crd is not None:
            crd = self.store.get(CRD_KEY, "", rt.crd.name)
            if crd is not None and crd.obj["metadata"].get("deletionTimestamp"):
                raise StatusError(405, "MethodNotAllowed",
                                  "create not allowed while custom resource definition is terminating")
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        used_ips: set[str] | None = None
        if rt.plural == "services" and not rt.group:
            used_ips = {s.obj.get("spec", {}).get("clusterIP", "") for s in self.store.list_objects(rt.key, None)[0]}
        strategies.prepare_create(rt, obj, used_cluster_ips=used_ips)
        self._crd_shape(rt, obj, version or rt.storage_version, opts)
        errs = strategies.validate(rt, obj, None)
        if errs:
            raise invalid(rt.kind, rt.group, name, errs)
        if self.store.get(rt.key, ns, name) is not None:
            raise already_exists(rt.plural, rt.group, name)
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
        elif opts.field_manager:
            meta["managedFields"] = managed.record_update(
                None, obj, manager=opts.field_manager, api_version=obj["apiVersion"], now=now_rfc3339(),
                subresource="", list_info=self._list_info(rt))
        if not meta.get("managedFields"):
            meta.pop("managedFields", None)
        obj = _ordered(obj)
        obj["apiVersion"] = rt.api_version()
        if opts.dry_run:
            obj["metadata"].pop("resourceVersion", None)
            return Stored(obj, dumps(obj), 0)
        if rt.key == CRD_KEY:
            obj["metadata"].setdefault("finalizers", [])
            if CRD_FINALIZER not in obj["metadata"]["finalizers"]:
                obj["metadata"]["finalizers"].append(CRD_FINALIZER)
            obj["status"] = strategies.crd_status(obj, now_rfc3339())
            self._register_crd(obj)
        stored = self.store.put(rt.key, ns, name, obj, event=ADDED)
        self._hooks(rt.key, ns, name, stored, None)
        return stored

    def _check_namespace_open(self, namespace: str, rt: ResourceType) -> None:
        ns_obj = self.store.get(NS_KEY, "", namespace)
        if ns_obj is None:
            raise not_found("namespaces", "", namespace)
        if ns_obj.obj["metadata"].get("deletionTimestamp"):
            raise forbidden(f"{rt.plural}{'.' + rt.group if rt.group else ''} is forbidden: unable to create new "
                            f"content in namespace {namespace} because it is being terminated",
                            {"name": "", "kind": rt.plural,
                             "causes": [{"reason": "NamespaceTerminating",
                                         "message": f"namespace {namespace} is being terminated",
                                         "field": "metadata.namespace"}]})

    def _list_info(self, rt: ResourceType) -> managed.ListInfo:
        if rt.crd is not None:
            return managed.schema_list_info(rt.crd.schemas.get(rt.storage_version) or {})
        return managed.builtin_list_info

    def _crd_shape(self, rt: ResourceType, obj: dict[str, Any], version: str, opts: Options | None = None) -> None:
        """Prune unknown fields, apply defaults, validate against the version's schema (custom resources).

        Unknown fields are an error with fieldValidation=Strict and a warning with Warn (the default),
        as kube-apiserver reports them."""
        if rt.crd is None:
            return
        schema = rt.crd.schemas.get(version) or rt.crd.schemas.get(rt.storage_version) or {}
        removed: list[str] = []
        structural.prune(obj, schema, root=True, removed=removed)
        if removed and opts is not None and opts.field_validation != "Ignore":
            texts = [f'unknown field "{p}"' for p in removed]
            if opts.field_validation == "Strict":
                raise bad_request("strict decoding error: " + ", ".join(texts))
            opts.warnings.extend(texts)
        structural.apply_defaults(obj, schema)
        errs = structural.validate(obj, schema, root=True)
        errs = [e for e in errs if not e.field.startswith("metadata")] + strategies.validate_metadata(rt, obj)
        if errs:
            raise invalid(rt.kind, rt.group, obj["metadata"].get("name", ""), _dedupe(errs))

    # --- update / patch / apply ---------------------------------------------------------------

    def update(self, rt: ResourceType, version: str, namespace: str, name: str, body: bytes, opts: Options,
               subresource: str = "") -> bytes:
        obj = self.decode(rt, version, body)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        with self.store.lock:
            old = self._get_or_404(rt, namespace, name)
            want_rv = meta.get("resourceVersion")
            if want_rv:
                if want_rv != old.obj["metadata"]["resourceVersion"]:
                    raise conflict(rt.plural, rt.group, name)
            elif not rt.allow_unconditional_update:
                raise invalid(rt.kind, rt.group, name, [Cause("FieldValueInvalid", "metadata.resourceVersion",
                                                              "must be specified for an update", 0)])
            stored = self._update_internal(rt, namespace, old, obj, opts, subresource, version)
        return stored.view(rt.api_version(version))

    def patch(self, rt: ResourceType, version: str, namespace: str, name: str, body: bytes, content_type: str,
              opts: Options, subresource: str = "") -> tuple[int, bytes]:
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES or ctype == "application/apply-patch+cbor":
            raise unsupported_media(", ".join(t for t in PATCH_TYPES if t != "application/apply-patch+cbor"))
        if ctype == "application/strategic-merge-patch+json" and not rt.strategic_merge:
            raise unsupported_media("application/json-patch+json, application/merge-patch+json, "
                                    "application/apply-patch+yaml")
        if ctype == "application/apply-patch+yaml":
            return self._apply(rt, version, namespace, name, body, opts, subresource)
        patch_doc = parse_json(body, "patch")
        with self.store.lock:
            old = self._get_or_404(rt, namespace, name)
            current = json.loads(old.view(rt.api_version(version)))
            if ctype == "application/json-patch+json":
                new = json_patch(current, patch_doc)
            elif ctype == "application/merge-patch+json":
                if not isinstance(patch_doc, dict):
                    raise bad_request("json: cannot unmarshal into Go value of type map[string]interface {}")
                new = merge_patch(current, patch_doc)
            else:
                if not isinstance(patch_doc, dict):
                    raise bad_request("json: cannot unmarshal into Go value of type map[string]interface {}")
                new = strategic_merge(current, patch_doc)
            if not isinstance(new, dict):
                raise bad_request("the patched object is not a JSON object")
            new_meta: dict[str, Any] = new["metadata"] if isinstance(new.get("metadata"), dict) else {}
            new["metadata"] = new_meta
            want_rv = new_meta.get("resourceVersion")
            if want_rv and want_rv != old.obj["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            new_meta["name"] = name
            if rt.namespaced:
                new_meta["namespace"] = self._ns(rt, namespace)
            if new.get("apiVersion") != rt.api_version(version) or new.get("kind") != rt.kind:
                raise bad_request("the patch may not change apiVersion or kind")
            stored = self._update_internal(rt, namespace, old, _ordered(new), opts, subresource, version)
        return 200, stored.view(rt.api_version(version))

    def _apply(self, rt: ResourceType, version: str, namespace: str, name: str, body: bytes, opts: Options,
               subresource: str) -> tuple[int, bytes]:
        try:
            config = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("error decoding YAML: the apply configuration must be an object")
        want = rt.api_version(version)
        if config.get("apiVersion") != want or config.get("kind") != rt.kind:
            raise bad_request(f"the apply configuration must set apiVersion {want} and kind {rt.kind}")
        meta = config.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise bad_request(f"the name of the object ({(meta or {}).get('name')}) does not match the name on the "
                              f"URL ({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        with self.store.lock:
            old = self.store.get(rt.key, self._ns(rt, namespace), name)
            live = json.loads(old.view(want)) if old is not None else None
            if old is not None and meta.get("resourceVersion") and \
                    meta["resourceVersion"] != old.obj["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            cfg = copy.deepcopy(config)
            cfg["metadata"].pop("resourceVersion", None)
            merged, fields = managed.apply(
                live, cfg, manager=opts.field_manager, force=opts.force, api_version=want, now=now_rfc3339(),
                subresource=subresource, list_info=self._list_info(rt), plural=rt.plural, group=rt.group)
            if old is None:
                if subresource:
                    raise not_found(rt.plural, rt.group, name)
                merged["metadata"].pop("managedFields", None)
                if rt.namespaced:
                    merged["metadata"]["namespace"] = namespace
                stored = self._create_internal(rt, namespace, _ordered(merged), opts=opts, version=version,
                                               managed_fields=fields)
                return 201, stored.view(want)
            merged["metadata"]["managedFields"] = fields
            stored = self._update_internal(rt, namespace, old, _ordered(merged), opts, subresource, version,
                                           managed_fields=fields)
        return 200, stored.view(want)

    def _update_internal(self, rt: ResourceType, namespace: str, old: Stored, new: dict[str, Any], opts: Options,
                         subresource: str, version: str = "",
                         managed_fields: list[dict[str, Any]] | None = None) -> Stored:
        ns = self._ns(rt, namespace)
        old_obj = old.obj
        name = old_obj["metadata"]["name"]
        new["apiVersion"] = rt.api_version()
        strategies.prepare_update(rt, new, old_obj, subresource)
        meta = new["metadata"]
        if rt.namespaced:
            meta["namespace"] = ns
        if subresource != "status":
            self._crd_shape(rt, new, version or rt.storage_version, opts)
        elif rt.crd is not None:
            schema = rt.crd.schemas.get(version or rt.storage_version) or {}
            structural.prune(new, schema, root=True)
            structural.apply_defaults(new, schema)
            errs = [e for e in structural.validate(new, schema, root=True) if not e.field.startswith("metadata")]
            if errs:
                raise invalid(rt.kind, rt.group, name, _dedupe(errs))
        errs = strategies.validate(rt, new, old_obj)
        if errs:
            raise invalid(rt.kind, rt.group, name, errs)
        old_meta = old_obj["metadata"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(rt.kind, rt.group, name, [Cause(
                    "FieldValueForbidden", "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers "
                    f"{json.dumps(sorted(added))}")])
        if rt.has_generation:
            skip = ("metadata", "status") if rt.status_subresource else ("metadata",)
            old_spec = {k: v for k, v in old_obj.items() if k not in skip and k not in ("apiVersion", "kind")}
            new_spec = {k: v for k, v in new.items() if k not in skip and k not in ("apiVersion", "kind")}
            generation = int(old_meta.get("generation") or 1)
            meta["generation"] = generation + 1 if old_spec != new_spec else generation
        if managed_fields is None:
            meta["managedFields"] = managed.record_update(
                old_obj, new, manager=opts.field_manager or "unknown", api_version=new["apiVersion"],
                now=now_rfc3339(), subresource=subresource, list_info=self._list_info(rt))
        else:
            meta["managedFields"] = managed_fields
        if not meta.get("managedFields"):
            meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if _same(new, old_obj):
            return old  # a no-op write: no new resourceVersion, no event (as the real server)
        new = _ordered(new)
        if opts.dry_run:
            return Stored(new, dumps(new), old.rv)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not (
                rt.key == NS_KEY and (new.get("spec") or {}).get("finalizers")):
            stored = self.store.remove(rt.key, ns, name, new)
            self._after_delete(rt, ns, name, stored)
            return stored
        if rt.key == CRD_KEY:
            new["status"] = strategies.crd_status(new, now_rfc3339()) if subresource != "status" else new.get(
                "status", {})
            if not meta.get("deletionTimestamp"):
                self._register_crd(new)
        stored = self.store.put(rt.key, ns, name, new, event=MODIFIED)
        self._hooks(rt.key, ns, name, stored, old)
        return stored

    # --- delete --------------------------------------------------------------------------

    def delete(self, rt: ResourceType, version: str, namespace: str, name: str, body: bytes,
               query: dict[str, str]) -> tuple[int, bytes]:
        options = _delete_options(body, query)
        with self.store.lock:
            old = self._get_or_404(rt, namespace, name)
            code, result = self._delete_internal(rt, namespace, old, options)
        api_version = rt.api_version(version)
        if isinstance(result, Stored):
            return code, result.view(api_version)
        return code, dumps(result)

    def _delete_internal(self, rt: ResourceType, namespace: str, old: Stored, options: dict[str, Any]
                         ) -> tuple[int, Stored | dict[str, Any]]:
        ns = self._ns(rt, namespace)
        meta = old.obj["metadata"]
        name = meta["name"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise conflict(rt.plural, rt.group, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                                      f"UID in object meta: {meta.get('uid')}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise conflict(rt.plural, rt.group, name, f"Precondition failed: ResourceVersion in precondition: "
                                                      f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                                      f"{meta.get('resourceVersion')}")
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        if policy not in (None, "Background", "Foreground", "Orphan"):
            raise invalid("DeleteOptions", "", "", [Cause("FieldValueNotSupported", "propagationPolicy",
                                                          'supported values: "Foreground", "Background", '
                                                          '"Orphan", "nil"', policy)])
        dry_run = "All" in (options.get("dryRun") or [])
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if policy in ("Foreground", "Orphan") and not self.store.dependents(meta.get("uid", "")):
            finalizers = [f for f in finalizers if f not in ("foregroundDeletion", "orphan")] \
                if not meta.get("finalizers") else finalizers
        if rt.key == NS_KEY or rt.key == CRD_KEY:
            # namespaces always terminate through their controller (spec.finalizers: kubernetes)
            finalizers = finalizers or []
            graceful = True
        else:
            graceful = bool(finalizers)
        if graceful:
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return 200, old
            new = json.loads(old.raw)
            nmeta = new["metadata"]
            nmeta.setdefault("deletionTimestamp", now_rfc3339())
            nmeta.setdefault("deletionGracePeriodSeconds", 0)
            if finalizers:
                nmeta["finalizers"] = finalizers
            if rt.has_generation and not meta.get("deletionTimestamp"):
                nmeta["generation"] = int(nmeta.get("generation") or 1) + 1
            if rt.key == NS_KEY:
                new.setdefault("status", {})["phase"] = "Terminating"
            if dry_run:
                return 200, Stored(new, dumps(new), old.rv)
            stored = self.store.put(rt.key, ns, name, new, event=MODIFIED)
            self._hooks(rt.key, ns, name, stored, old)
            return 200, stored
        final = json.loads(old.raw)
        if dry_run:
            return 200, Stored(final, old.raw, old.rv) if rt.return_deleted_object else success(
                name, rt.group, rt.plural, meta.get("uid"))
        stored = self.store.remove(rt.key, ns, name, final)
        self._after_delete(rt, ns, name, stored)
        if rt.return_deleted_object:
            return 200, stored
        return 200, success(name, rt.group, rt.plural, meta.get("uid"))

    def delete_collection(self, rt: ResourceType, version: str, namespace: str | None, body: bytes,
                          query: dict[str, str]) -> bytes:
        """Delete every selected object; the answer is the list of what was deleted (or is now
        terminating), as kube-apiserver returns it."""
        options = _delete_options(body, query)
        api_version = rt.api_version(version)
        out: list[bytes] = []
        with self.store.lock:
            items, _, _ = self.select(rt, namespace, query)
            for stored in items:
                current = self.store.get(rt.key, stored.obj["metadata"].get("namespace", ""),
                                         stored.obj["metadata"]["name"])
                if current is None:
                    continue
                _, result = self._delete_internal(rt, current.obj["metadata"].get("namespace", ""), current,
                                                  options)
                out.append(result.view(api_version) if isinstance(result, Stored) else current.view(api_version))
            rv = self.store.rv
        head = b'{"kind":%s,"apiVersion":%s,"metadata":{"resourceVersion":"%d"},"items":[' % (
            dumps(rt.list_kind), dumps(api_version), rv)
        return head + b",".join(out) + b"]}"

    def _after_delete(self, rt: ResourceType, ns: str, name: str, stored: Stored) -> None:
        uid = stored.obj["metadata"].get("uid", "")
        if self.store.dependents(uid):
            self._enqueue(("owner-gone", uid))
        if rt.key == CRD_KEY:
            spec = stored.obj.get("spec") or {}
            found = self.registry.by_key(f"{spec.get('group')}/{(spec.get('names') or {}).get('plural')}")
            if found is not None:
                self.registry.remove(found)
        if rt.key == NS_KEY:
            return
        if ns:
            ns_obj = self.store.get(NS_KEY, "", ns)
            if ns_obj is not None and ns_obj.obj["metadata"].get("deletionTimestamp"):
                self._enqueue(("namespace", ns))
        for ref in stored.obj["metadata"].get("ownerReferences") or ():
            owner = self.store.by_uid(ref.get("uid", ""))
            if owner is not None:
                self._enqueue(("foreground", *owner))
        if rt.crd is not None:
            self._enqueue(("crd", rt.crd.name))

    # --- subresources and virtual kinds ------------------------------------------------------

    def _scale_paths(self, rt: ResourceType) -> tuple[str, str, str | None]:
        """(spec replicas path, status replicas path, label selector path) of a scalable kind."""
        if rt.crd is not None and rt.crd.scale:
            s = rt.crd.scale
            return (s.get("specReplicasPath", ".spec.replicas"), s.get("statusReplicasPath", ".status.replicas"),
                    s.get("labelSelectorPath"))
        return ".spec.replicas", ".status.replicas", None

    def _scale_of(self, rt: ResourceType, stored: Stored) -> dict[str, Any]:
        spec_path, status_path, selector_path = self._scale_paths(rt)
        obj = stored.obj
        meta = obj["metadata"]
        status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
        if selector_path:
            selector = _get_path(obj, selector_path)
            if selector:
                status["selector"] = selector
        else:
            sel = (obj.get("spec") or {}).get("selector") or {}
            labels = sel.get("matchLabels") or {}
            if labels:
                status["selector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": _get_path(obj, spec_path) or 0}, "status": status}

    def scale(self, rt: ResourceType, version: str, namespace: str, name: str, verb: str, body: bytes,
              content_type: str, opts: Options) -> tuple[int, bytes]:
        """GET/PUT/PATCH of the autoscaling/v1 Scale subresource."""
        with self.store.lock:
            old = self._get_or_404(rt, namespace, name)
            current = self._scale_of(rt, old)
            if verb == "get":
                return 200, dumps(current)
            doc = parse_json(body, "Scale")
            if verb == "update":
                new_scale = doc
            elif content_type.startswith("application/json-patch+json"):
                new_scale = json_patch(current, doc)
            elif isinstance(doc, dict):
                new_scale = merge_patch(current, doc)
            else:
                raise bad_request("the Scale patch must be a JSON object")
            if not isinstance(new_scale, dict):
                raise bad_request("the body of the request could not be decoded as a Scale")
            want_rv = (new_scale.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != old.obj["metadata"]["resourceVersion"]:
                raise conflict(rt.plural, rt.group, name)
            replicas = (new_scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid("Scale", "autoscaling", name, [Cause(
                    "FieldValueInvalid", "spec.replicas", "must be greater than or equal to 0", replicas)])
            new = json.loads(old.raw)
            _set_path(new, self._scale_paths(rt)[0], replicas)
            stored = self._update_internal(rt, namespace, old, new, opts, "", version)
            return 200, dumps(self._scale_of(rt, stored))

    def token_request(self, namespace: str, name: str, body: bytes) -> bytes:
        req = parse_json(body)
        if not isinstance(req, dict):
            raise bad_request("the body of the request could not be decoded as a TokenRequest")
        spec = req.get("spec") or {}
        sa = self.store.get(SA_KEY, namespace, name)
        if sa is None:
            raise not_found("serviceaccounts", "", name)
        audiences = list(spec.get("audiences") or API_AUDIENCES)
        expiration = spec.get("expirationSeconds", 3600)
        if not isinstance(expiration, int) or expiration < 600:
            raise invalid("TokenRequest", "authentication.k8s.io", name, [Cause(
                "FieldValueInvalid", "spec.expirationSeconds", "may not specify a duration less than 10 minutes",
                expiration)])
        if expiration > 1 << 32:
            raise invalid("TokenRequest", "authentication.k8s.io", name, [Cause(
                "FieldValueTooLong", "spec.expirationSeconds", "may not specify a duration larger than 2^32 seconds",
                expiration)])
        bound_ref = spec.get("boundObjectRef")
        bound = None
        if isinstance(bound_ref, dict) and bound_ref.get("name"):
            kind = bound_ref.get("kind")
            plural = {"Pod": "pods", "Secret": "secrets"}.get(str(kind))
            if plural is None:
                raise bad_request(f"cannot bind token to object of kind {kind}")
            obj = self.store.get(f"/{plural}", namespace, bound_ref["name"])
            if obj is None:
                raise not_found(plural, "", bound_ref["name"])
            if bound_ref.get("uid") and bound_ref["uid"] != obj.obj["metadata"]["uid"]:
                raise conflict(plural, "", bound_ref["name"], "the UID in the bound object reference does not "
                                                             "match the object")
            bound = {"kind": kind, "name": bound_ref["name"], "uid": obj.obj["metadata"]["uid"]}
        token, exp = self.auth.mint(sa.obj, audiences, expiration, bound)
        out = {
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": now_rfc3339()},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": bound_ref},
            "status": {"token": token, "expirationTimestamp": datetime.datetime.fromtimestamp(
                exp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        }
        return dumps(out)

    def review(self, rt: ResourceType, namespace: str, body: bytes, user: UserInfo) -> bytes:
        req = parse_json(body)
        if not isinstance(req, dict):
            raise bad_request(f"the body of the request could not be decoded as a {rt.kind}")
        spec = req.get("spec") or {}
        status: dict[str, Any]
        if rt.plural == "tokenreviews":
            token = spec.get("token")
            if not token:
                raise invalid("TokenReview", "authentication.k8s.io", "", [Cause("FieldValueRequired",
                                                                                 "spec.token", "token is required")])
            try:
                who, auds = self.auth.authenticate(str(token), tuple(spec.get("audiences") or ()) or None)
                status = {"authenticated": True, "user": who.to_json(), "audiences": list(auds)}
            except AuthFailure as exc:
                status = {"authenticated": False, "user": {}, "error": f"[{exc}]"}
                if spec.get("audiences"):
                    status["audiences"] = []
        elif rt.plural == "selfsubjectreviews":
            status = {"userInfo": user.to_json()}
        else:
            if rt.plural in ("selfsubjectaccessreviews",):
                subject = user
            else:
                subject = UserInfo(str(spec.get("user") or ""), str(spec.get("uid") or ""),
                                   tuple(spec.get("groups") or ()), dict(spec.get("extra") or {}))
            attrs = spec.get("resourceAttributes") or spec.get("nonResourceAttributes") or {}
            if rt.plural == "localsubjectaccessreviews":
                attrs = dict(attrs, namespace=namespace)
            allowed, reason = authorize(self.store, subject, attrs, "resourceAttributes" in spec)
            status = {"allowed": allowed}
            if reason:
                status["reason"] = reason
        out_meta: dict[str, Any] = {"creationTimestamp": None}
        if rt.namespaced:
            out_meta["namespace"] = namespace
        out = {"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": out_meta, "spec": spec, "status": status}
        return dumps(out)

    # --- CRDs --------------------------------------------------------------------------------

    def _register_crd(self, crd: dict[str, Any]) -> None:
        try:
            rt = from_crd(crd)
        except (KeyError, StopIteration, TypeError) as exc:
            log.warning("cannot register CRD", extra={"crd": crd["metadata"].get("name"), "error": repr(exc)})
            return
        self.registry.add(rt)

    # --- controllers ---------------------------------------------------------------------

    def _hooks(self, key: str, ns: str, name: str, stored: Stored, old: Stored | None) -> None:
        """Queue controller work a write implies (called under the store lock)."""
        meta = stored.obj["metadata"]
        if key == NS_KEY and old is None and not meta.get("deletionTimestamp"):
            self._enqueue(("ns-init", name))
        if meta.get("deletionTimestamp"):
            fins = meta.get("finalizers") or []
            if key == NS_KEY:
                self._enqueue(("namespace", name))
            if key == CRD_KEY:
                self._enqueue(("crd", name))
            if "foregroundDeletion" in fins:
                self._enqueue(("foreground", key, ns, name))
            if "orphan" in fins:
                self._enqueue(("orphan", key, ns, name))
        if meta.get("ownerReferences") and (old is None or old.obj["metadata"].get("ownerReferences")
                                            != meta["ownerReferences"]):
            self._enqueue(("dangling", key, ns, name))

    def _enqueue(self, task: tuple[str, ...]) -> None:
        with self._wake:
            self._pending.add(task)
            self._wake.notify()

    def _controller_loop(self) -> None:
        """Run queued controller work. Unfinished work (content held by finalizers...) is retried with
        a backoff that resets whenever new work arrives; a task that keeps failing is dropped."""
        failures: dict[tuple[str, ...], int] = {}
        backoff = 0.05
        while True:
            with self._wake:
                if self._stopped:
                    return
                if not self._pending:
                    self._wake.wait(timeout=1.0)
                if self._stopped:
                    return
                tasks = list(self._pending)
                self._pending.clear()
                retry: set[tuple[str, ...]] = set()
                for task in tasks:
                    try:
                        if not self._run_task(task):
                            retry.add(task)
                        failures.pop(task, None)
                    except Exception:
                        failures[task] = failures.get(task, 0) + 1
                        if failures[task] >= 20:
                            log.exception("controller task dropped after 20 failures", extra={"task": list(task)})
                            failures.pop(task)
                        else:
                            log.debug("controller task failed", exc_info=True, extra={"task": list(task)})
                            retry.add(task)
                self._pending |= retry
                woken = self._wake.wait(timeout=backoff) if retry else True
                backoff = 0.05 if woken else min(backoff * 2, 0.5)  # nothing new arrived: back off

    def _run_task(self, task: tuple[str, ...]) -> bool:
        """Do one unit of controller work; False = not finished yet, try again soon."""
        kind = task[0]
        if kind == "ns-init":
            return self._namespace_init(task[1])
        if kind == "namespace":
            return self._namespace_finalize(task[1])
        if kind == "owner-gone":
            return self._owner_gone(task[1])
        if kind == "dangling":
            return self._check_owners(task[1], task[2], task[3])
        if kind == "foreground":
            return self._foreground(task[1], task[2], task[3])
        if kind == "orphan":
            return self._orphan(task[1], task[2], task[3])
        if kind == "crd":
            return self._crd_cleanup(task[1])
        return True

    def _controller_opts(self, manager: str) -> Options:
        return Options(field_manager=manager)

    def _namespace_init(self, ns: str) -> bool:
        """What the ServiceAccount and root-CA-publisher controllers create in every new namespace."""
        ns_obj = self.store.get(NS_KEY, "", ns)
        if ns_obj is None or ns_obj.obj["metadata"].get("deletionTimestamp"):
            return True
        if self.store.get(SA_KEY, ns, "default") is None:
            self._create_internal(self.rt("", "serviceaccounts"), ns, {
                "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}},
                opts=self._controller_opts("kube-controller-manager"))
        if self.store.get("/configmaps", ns, "kube-root-ca.crt") is None:
            self._create_internal(self.rt("", "configmaps"), ns, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
                             "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to "
                                             "verify the kube-apiserver when using internal endpoints such as the "
                                             "internal service IP or kubernetes.default.svc. No other usage is "
                                             "guaranteed across distributions of Kubernetes clusters."}},
                "data": {"ca.crt": self.ca_bundle}}, opts=self._controller_opts("kube-controller-manager"))
        return True

    ca_bundle = ""

    def _delete_by_controller(self, key: str, ns: str, name: str, policy: str = "Background") -> None:
        rt = self.registry.by_key(key)
        current = self.store.get(key, ns, name)
        if rt is None or current is None:
            return
        if current.obj["metadata"].get("deletionTimestamp"):
            return
        self._delete_internal(rt, ns, current, {"propagationPolicy": policy})

    def _namespace_finalize(self, ns: str) -> bool:
        ns_obj = self.store.get(NS_KEY, "", ns)
        if ns_obj is None or not ns_obj.obj["metadata"].get("deletionTimestamp"):
            return True
        remaining = 0
        for key in self.store.keys():  # noqa: SIM118 (Store.keys is a method, not a dict)
            rt = self.registry.by_key(key)
            if key == NS_KEY or (rt is not None and not rt.namespaced):
                continue
            items, _ = self.store.list_objects(key, ns)
            for stored in items:
                self._delete_by_controller(key, ns, stored.obj["metadata"]["name"])
            remaining += self.store.count(key, ns)
        if remaining:
            self._set_ns_conditions(ns_obj, remaining)
            return False
        current = self.store.get(NS_KEY, "", ns)
        if current is None:
            return True
        new = json.loads(current.raw)
        new["spec"]["finalizers"] = [f for f in new.get("spec", {}).get("finalizers") or [] if f != "kubernetes"]
        if new["metadata"].get("finalizers"):
            if new != current.obj:
                self.store.put(NS_KEY, "", ns, new, event=MODIFIED)
            return False
        final = self.store.remove(NS_KEY, "", ns, new)
        self._after_delete(self.rt("", "namespaces"), "", ns, final)
        return True

    def _set_ns_conditions(self, ns_obj: Stored, remaining: int) -> None:
        conds = ns_obj.obj.get("status", {}).get("conditions") or []
        if any(c.get("type") == "NamespaceContentRemaining" and c.get("status") == "True" for c in conds):
            return
        new = json.loads(ns_obj.raw)
        now = now_rfc3339()
        new["status"]["conditions"] = [
            {"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "reason": "ResourcesDiscovered",
             "message": "All resources successfully discovered", "lastTransitionTime": now},
            {"type": "NamespaceDeletionContentFailure", "status": "False", "reason": "ContentDeleted",
             "message": "All content successfully deleted, may be waiting on finalization",
             "lastTransitionTime": now},
            {"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
             "message": f"Some resources are remaining: {remaining} objects", "lastTransitionTime": now},
        ]
        self.store.put(NS_KEY, "", ns_obj.obj["metadata"]["name"], new, event=MODIFIED)

    def _live_owner(self, ref: dict[str, Any], dep_ns: str) -> Stored | None:
        found = self.store.by_uid(ref.get("uid", ""))
        if found is None:
            return None
        key, ns, name = found
        if name != ref.get("name") or (ns and ns != dep_ns):
            return None
        return self.store.get(key, ns, name)

    def _owner_gone(self, uid: str) -> bool:
        for key, ns, name in self.store.dependents(uid):
            self._check_owners(key, ns, name)
        return True

    def _check_owners(self, key: str, ns: str, name: str) -> bool:
        """The garbage collector's decision for one dependent: delete it when all owners are gone,
        drop dangling references when some remain."""
        dep = self.store.get(key, ns, name)
        if dep is None:
            return True
        refs = dep.obj["metadata"].get("ownerReferences") or []
        if not refs:
            return True
        live = [r for r in refs if self._live_owner(r, ns) is not None]
        if not live:
            waiting = any(r.get("blockOwnerDeletion") for r in refs)
            self._delete_by_controller(key, ns, name, "Foreground" if waiting and self.store.dependents(
                dep.obj["metadata"].get("uid", "")) else "Background")
            return True
        if len(live) != len(refs):
            self._rewrite_owner_refs(key, ns, dep, live)
        return True

    def _rewrite_owner_refs(self, key: str, ns: str, dep: Stored, refs: list[dict[str, Any]]) -> None:
        rt = self.registry.by_key(key)
        if rt is None:
            return
        new = json.loads(dep.raw)
        if refs:
            new["metadata"]["ownerReferences"] = refs
        else:
            new["metadata"].pop("ownerReferences", None)
        self._update_internal(rt, ns, dep, new, self._controller_opts("kube-controller-manager"), "")

    def _foreground(self, key: str, ns: str, name: str) -> bool:
        owner = self.store.get(key, ns, name)
        if owner is None or "foregroundDeletion" not in (owner.obj["metadata"].get("finalizers") or []):
            return True
        uid = owner.obj["metadata"]["uid"]
        blocking = 0
        for dkey, dns, dname in self.store.dependents(uid):
            dep = self.store.get(dkey, dns, dname)
            if dep is None:
                continue
            has_deps = bool(self.store.dependents(dep.obj["metadata"].get("uid", "")))
            self._delete_by_controller(dkey, dns, dname, "Foreground" if has_deps else "Background")
            dep = self.store.get(dkey, dns, dname)
            if dep is not None and any(r.get("uid") == uid and r.get("blockOwnerDeletion")
                                       for r in dep.obj["metadata"].get("ownerReferences") or []):
                blocking += 1
        if blocking:
            return False
        self._remove_finalizer(key, ns, name, "foregroundDeletion")
        return True

    def _orphan(self, key: str, ns: str, name: str) -> bool:
        owner = self.store.get(key, ns, name)
        if owner is None or "orphan" not in (owner.obj["metadata"].get("finalizers") or []):
            return True
        uid = owner.obj["metadata"]["uid"]
        for dkey, dns, dname in self.store.dependents(uid):
            dep = self.store.get(dkey, dns, dname)
            if dep is not None:
                refs = [r for r in dep.obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                self._rewrite_owner_refs(dkey, dns, dep, refs)
        self._remove_finalizer(key, ns, name, "orphan")
        return True

    def _remove_finalizer(self, key: str, ns: str, name: str, finalizer: str) -> None:
        rt = self.registry.by_key(key)
        current = self.store.get(key, ns, name)
        if rt is None or current is None:
            return
        new = json.loads(current.raw)
        new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._update_internal(rt, ns, current, new, self._controller_opts("kube-controller-manager"), "")

    def _crd_cleanup(self, crd_name: str) -> bool:
        crd = self.store.get(CRD_KEY, "", crd_name)
        if crd is None or not crd.obj["metadata"].get("deletionTimestamp"):
            return True
        spec = crd.obj["spec"]
        key = f"{spec['group']}/{spec['names']['plural']}"
        remaining = 0
        for ns in self.store.namespaces_of(key):
            items, _ = self.store.list_objects(key, ns)
            for stored in items:
                self._delete_by_controller(key, ns, stored.obj["metadata"]["name"])
            remaining += self.store.count(key, ns)
        if remaining:
            return False
        self._remove_finalizer(CRD_KEY, "", crd_name, CRD_FINALIZER)
        return True

    # --- misc ----------------------------------------------------------------------------

    def authenticate_request(self, token: str) -> UserInfo:
        try:
            return self.auth.authenticate(token)[0]
        except AuthFailure:
            raise StatusError(401, "Unauthorized", "Unauthorized") from None


def _get_path(obj: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from managedFields timestamps (the real server's no-op detection)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        if key == "metadata":
            ma, mb = a["metadata"], b["metadata"]
            if {k: v for k, v in ma.items() if k != "managedFields"} != {
                    k: v for k, v in mb.items() if k != "managedFields"}:
                return False
            fa = [{k: v for k, v in e.items() if k != "time"} for e in ma.get("managedFields") or []]
            fb = [{k: v for k, v in e.items() if k != "time"} for e in mb.get("managedFields") or []]
            if fa != fb:
                return False
        elif a[key] != b[key]:
            return False
    return True


def _ordered(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("apiVersion", "kind", "metadata"):
        if key in obj:
            out[key] = obj[key]
    for key, value in obj.items():
        if key not in out:
            out[key] = value
    return out


def _dedupe(errs: list[Cause]) -> list[Cause]:
    seen: set[tuple[str, str]] = set()
    out = []
    for e in errs:
        ident = (e.field, e.full())
        if ident not in seen:
            seen.add(ident)
            out.append(e)
    return out


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"Invalid value: \"{text}\": resource version must be a number") from None
    return value


def _parse_int(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"invalid {what}: {text!r}") from None


def _delete_options(body: bytes, query: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if body and body.strip():
        parsed = parse_json(body, "DeleteOptions")
        if isinstance(parsed, dict):
            options = parsed
    if "propagationPolicy" in query:
        options["propagationPolicy"] = query["propagationPolicy"]
    if "orphanDependents" in query:
        options["orphanDependents"] = query["orphanDependents"] in ("true", "1")
    if "gracePeriodSeconds" in query:
        options["gracePeriodSeconds"] = _parse_int(query["gracePeriodSeconds"], "gracePeriodSeconds")
    if query.get("dryRun") == "All":
        options["dryRun"] = ["All"]
    return options


def deepcopy_json(obj: Any) -> Any:
    return copy.deepcopy(obj)
