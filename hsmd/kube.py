"""The one place hsmd builds Kubernetes API clients and talks to the API generically.

Used by discovery (its pod annotation), the collection modules (k8s_status, hsm_pool), tests and
the operator: ``api_client()`` loads a kubeconfig or the in-cluster ServiceAccount,
``crd_documents()``/``install_crds()`` apply the chart's CRDs (the only copy of them), and a small
generic REST layer (``resolve_resource``, ``get_object``, ``replace_status``, ``merge_patch``)
reaches any resource by apiVersion/kind without the dynamic client's full discovery walk.
Kubernetes errors become hsmd errors here (``api_error``), once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from hsmd import errors

GROUP = "hsm.j5t.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {"HSMSecret": "hsmsecrets", "HSMDevice": "hsmdevices", "HSMPool": "hsmpools"}
DEVICE_REPORT_ANNOTATION = "hsm.j5t.io/device-report"
MERGE_PATCH = "application/merge-patch+json"

Object = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def crds_dir() -> Path:
    """charts/hsm-secrets-operator/crds of this checkout (the single source of the CRD YAML)."""
    import hsmd

    return Path(hsmd.__file__).resolve().parents[1] / "charts" / "hsm-secrets-operator" / "crds"


def crd_documents(directory: Path | None = None) -> list[Object]:
    """Every CustomResourceDefinition document in the chart's crds directory, sorted by file name."""
    root = directory or crds_dir()
    if not root.is_dir():
        raise errors.FailedPrecondition(f"CRD directory {root} does not exist")
    docs: list[Object] = []
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_LOADER):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    if not docs:
        raise errors.FailedPrecondition(f"no CustomResourceDefinition found in {root}")
    return docs


# --- clients -------------------------------------------------------------------------------------


def api_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    host: str | None = None,
    api_key: str | None = None,
    validate_certs: bool | None = None,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    connection_pool_maxsize: int | None = None,
) -> k8s.ApiClient:
    """An ApiClient for a kubeconfig (explicit, $KUBECONFIG, ~/.kube/config) or, failing that, the
    in-cluster ServiceAccount. ``host``/``api_key``/... override the loaded values (the auth options
    of kubernetes.core). ``connection_pool_maxsize`` raises urllib3's default of 10 connections for
    long-running callers that hold watches open and write in parallel. Never touches the client
    library's global default configuration."""
    configuration = k8s.Configuration()
    explicit = bool(host and api_key)
    if not explicit:
        _load(configuration, kubeconfig, context)
    if host:
        configuration.host = host
    if api_key:
        configuration.api_key = {"BearerToken": f"Bearer {api_key}"}
        configuration.api_key_prefix = {}
    if validate_certs is not None:
        configuration.verify_ssl = validate_certs
    if ca_cert:
        configuration.ssl_ca_cert = ca_cert
    if client_cert:
        configuration.cert_file = client_cert
    if client_key:
        configuration.key_file = client_key
    if connection_pool_maxsize:
        configuration.connection_pool_maxsize = connection_pool_maxsize
    return k8s.ApiClient(configuration)


def _load(configuration: k8s.Configuration, kubeconfig: str | None, context: str | None) -> None:
    if kubeconfig or context:
        _load_kubeconfig(configuration, kubeconfig, context)
        return
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    default_file = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not in_cluster or Path(default_file.split(os.pathsep)[0]).exists():
        try:
            _load_kubeconfig(configuration, None, None)
            return
        except errors.FailedPrecondition:
            if not in_cluster:
                raise
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException as exc:
        raise errors.FailedPrecondition(f"no kubeconfig and no in-cluster service account: {exc}") from exc


def _load_kubeconfig(configuration: k8s.Configuration, kubeconfig: str | None, context: str | None) -> None:
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError) as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise errors.FailedPrecondition(f"cannot load kubeconfig {where}: {exc}") from exc


# --- errors --------------------------------------------------------------------------------------


def api_error(exc: ApiException, what: str) -> errors.HsmdError:
    """Kubernetes API failure -> the hsmd error of the same meaning (temporary for 429/5xx)."""
    status = int(exc.status or 0)
    reason = ""
    message = str(exc.reason or "")
    try:
        body = json.loads(exc.body) if exc.body else {}
        if isinstance(body, dict):
            reason = str(body.get("reason") or "")
            message = str(body.get("message") or message)
    except (TypeError, ValueError):
        pass
    text = f"{what}: {message}" if message else what
    if status == 404:
        return errors.NotFound(text)
    if status == 409:
        return errors.AlreadyExists(text) if reason == "AlreadyExists" else errors.Conflict(text)
    if status in (400, 422):
        return errors.InvalidArgument(text)
    if status == 401:
        return errors.Unauthenticated(text)
    if status == 403:
        return errors.Forbidden(text)
    if status == 429:
        return errors.Busy(text)
    if status == 504:
        return errors.DeadlineExceeded(text)
    if status == 0 or status >= 500:
        return errors.Unavailable(text)
    return errors.Internal(f"{text} (HTTP {status})")


# --- generic REST --------------------------------------------------------------------------------


def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    content_type: str | None = None,
    timeout: float | None = 30.0,
) -> Any:
    """One authenticated JSON request to ``path`` (e.g. /apis/hsm.j5t.io/v1alpha1). Raises ApiException."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type or "application/json"
    params = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*params, _request_timeout=timeout)
    response.read()  # type: ignore[no-untyped-call]
    return api.response_deserialize(response, {"2XX": "object"}).data


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool
    has_status: bool

    def collection_path(self, namespace: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


def resolve_resource(api: k8s.ApiClient, api_version: str, kind: str) -> Resource:
    """Find ``kind`` (or its plural, singular or short name) in the API group version by discovery."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    try:
        listing = request(api, "GET", base)
    except ApiException as exc:
        raise api_error(exc, f"API group version {api_version} is not served") from exc
    resources = listing.get("resources", []) if isinstance(listing, dict) else []
    names = {r.get("name") for r in resources}
    for entry in resources:
        name = str(entry.get("name", ""))
        if "/" in name:
            continue
        if kind in (entry.get("kind"), name, entry.get("singularName")) or kind in (entry.get("shortNames") or []):
            return Resource(
                api_version=api_version,
                kind=str(entry.get("kind")),
                plural=name,
                namespaced=bool(entry.get("namespaced")),
                has_status=f"{name}/status" in names,
            )
    raise errors.NotFound(f"kind {kind} is not served by {api_version}")


def get_object(api: k8s.ApiClient, resource: Resource, name: str, namespace: str | None = None) -> Object:
    try:
        obj = request(api, "GET", resource.object_path(name, namespace))
    except ApiException as exc:
        raise api_error(exc, f"get {resource.kind} {_ref(name, namespace)}") from exc
    return dict(obj)


def replace_status(api: k8s.ApiClient, resource: Resource, obj: Mapping[str, Any]) -> Object:
    """PUT the status subresource (optimistic: carries metadata.resourceVersion; Conflict when stale)."""
    meta = obj.get("metadata", {})
    name, namespace = str(meta.get("name")), meta.get("namespace")
    try:
        result = request(api, "PUT", resource.object_path(name, namespace) + "/status", body=dict(obj))
    except ApiException as exc:
        raise api_error(exc, f"update status of {resource.kind} {_ref(name, namespace)}") from exc
    return dict(result)


def merge_patch(
    api: k8s.ApiClient, resource: Resource, name: str, namespace: str | None, patch: Mapping[str, Any],
    *, subresource: str = "",
) -> Object:
    """RFC 7386 JSON merge patch of an object (or of its ``status`` subresource)."""
    path = resource.object_path(name, namespace) + (f"/{subresource}" if subresource else "")
    try:
        result = request(api, "PATCH", path, body=dict(patch), content_type=MERGE_PATCH)
    except ApiException as exc:
        raise api_error(exc, f"patch {resource.kind} {_ref(name, namespace)}") from exc
    return dict(result)


def patch_pod_annotations(api: k8s.ApiClient, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
    """Merge-patch annotations of one pod (None removes a key)."""
    pods = Resource("v1", "Pod", "pods", namespaced=True, has_status=True)
    merge_patch(api, pods, name, namespace, {"metadata": {"annotations": dict(annotations)}})


def _ref(name: str, namespace: str | None) -> str:
    return f"{namespace}/{name}" if namespace else name


# --- CRDs ----------------------------------------------------------------------------------------


def install_crds(
    api: k8s.ApiClient, *, wait: bool = True, timeout: float = 30.0, documents: list[Object] | None = None
) -> dict[str, str]:
    """Create or update the CRDs; returns {crd name: "created" | "updated" | "unchanged"}.

    With ``wait``, blocks until each CRD is Established when the server reports conditions at all
    (a server that never sets them is taken at its word once the CRD is readable)."""
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    outcome: dict[str, str] = {}
    for doc in documents if documents is not None else crd_documents():
        name = str(doc["metadata"]["name"])
        existing: Object | None
        try:
            existing = request(api, "GET", f"{base}/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(exc, f"read CRD {name}") from exc
            existing = None
        try:
            if existing is None:
                request(api, "POST", base, body=doc)
                outcome[name] = "created"
            elif existing.get("spec") == _with_server_defaults(doc, existing)["spec"]:
                outcome[name] = "unchanged"
            else:
                body = dict(doc)
                body["metadata"] = dict(doc["metadata"], resourceVersion=existing["metadata"]["resourceVersion"])
                request(api, "PUT", f"{base}/{name}", body=body)
                outcome[name] = "updated"
        except ApiException as exc:
            raise api_error(exc, f"apply CRD {name}") from exc
    if wait:
        for name in outcome:
            _wait_established(api, name, timeout)
    return outcome


def _with_server_defaults(doc: Object, current: Object) -> Object:
    """``doc`` with the spec fields an API server fills in (so an unchanged CRD compares equal)."""
    spec = dict(doc["spec"])
    for key in ("conversion", "preserveUnknownFields"):
        if key in current.get("spec", {}) and key not in spec:
            spec[key] = current["spec"][key]
    names = dict(spec.get("names", {}))
    for key, value in current.get("spec", {}).get("names", {}).items():
        names.setdefault(key, value)
    spec["names"] = names
    return dict(doc, spec=spec)


def _wait_established(api: k8s.ApiClient, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen_conditions = False
    first = time.monotonic()
    while True:
        try:
            crd = request(api, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        except ApiException as exc:
            raise api_error(exc, f"read CRD {name}") from exc
        conditions = (crd.get("status") or {}).get("conditions") or []
        seen_conditions = seen_conditions or bool(conditions)
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        # A server that reports no conditions within a second does not implement them.
        if not seen_conditions and time.monotonic() - first > 1.0:
            return
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"CRD {name} not Established after {timeout:g}s")
        time.sleep(0.05)


def iter_pods(api: k8s.ApiClient, namespace: str, label_selector: str) -> Iterator[Object]:
    """Pods of a namespace matching a label selector, as plain dicts (camelCase keys)."""
    try:
        listing = request(
            api, "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": label_selector}
        )
    except ApiException as exc:
        raise api_error(exc, f"list pods in {namespace}") from exc
    yield from listing.get("items", [])


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusUpdate:
    """Outcome of ``update_status``: the object before and (would-be) after, and whether it changed."""

    changed: bool
    before: Object
    after: Object


def update_status(
    api: k8s.ApiClient,
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None = None,
    *,
    status: Mapping[str, Any] | None = None,
    conditions: list[Mapping[str, Any]] | None = None,
    replace: bool = False,
    replace_lists: bool = False,
    check_mode: bool = False,
    now: str | None = None,
    resource: Resource | None = None,
    attempts: int = 5,
) -> StatusUpdate:
    """Merge ``status``/``conditions`` into the object's status (hsmd.status rules) and PUT it when it
    differs; a concurrent writer (409) makes it re-read and re-merge. ``check_mode`` writes nothing."""
    from hsmd import status as status_rules

    target = resource or resolve_resource(api, api_version, kind)
    if not target.has_status:
        raise errors.FailedPrecondition(f"{target.kind} ({api_version}) has no status subresource")
    if target.namespaced and not namespace:
        raise errors.InvalidArgument(f"{target.kind} is namespaced: a namespace is required")
    for attempt in range(attempts):
        current = get_object(api, target, name, namespace if target.namespaced else None)
        old = current.get("status") if isinstance(current.get("status"), dict) else {}
        merged = status_rules.merge_status(
            old, status, conditions, replace=replace, replace_lists=replace_lists, now=now
        )
        after = dict(current, status=merged)
        if not status_rules.status_changed(old, merged):
            return StatusUpdate(False, current, current)
        if check_mode:
            return StatusUpdate(True, current, after)
        try:
            return StatusUpdate(True, current, replace_status(api, target, after))
        except errors.Conflict:
            if attempt == attempts - 1:
                raise
    raise errors.Conflict(f"status of {kind} {name} kept changing")  # pragma: no cover - loop always returns


def list_objects(
    api: k8s.ApiClient, resource: Resource, namespace: str | None = None, label_selector: str = ""
) -> list[Object]:
    """Objects of one kind (in a namespace, or cluster-wide), optionally filtered by labels."""
    query = {"labelSelector": label_selector} if label_selector else None
    try:
        listing = request(api, "GET", resource.collection_path(namespace), query=query)
    except ApiException as exc:
        raise api_error(exc, f"list {resource.plural}" + (f" in {namespace}" if namespace else "")) from exc
    return [dict(item) for item in listing.get("items", [])]
