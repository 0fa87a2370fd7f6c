"""The I/O half of HSMPool aggregation: read the pool and the discovery pods, aggregate, write status.

``hsmd.pool.aggregate`` decides; this module only fetches its inputs and applies its output
through ``hsmd.kube`` (so the hsm_pool module, the hsm_pool role and the operator share it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hsmd import kube, pool
from hsmd.errors import InvalidArgument, NotFound
from hsmd.status import merge_conditions

DISCOVERY_SELECTOR = "app.kubernetes.io/component=discovery"
POOLS = kube.Resource(kube.API_VERSION, "HSMPool", "hsmpools", namespaced=True, has_status=True)


@dataclass(frozen=True)
class PoolResult:
    status: dict[str, Any]
    agents: list[dict[str, Any]]  # to deploy (hsmd.pool.plan_agents)
    stale_agents: list[str]  # agent Deployments of the pool that are no longer planned
    problems: list[dict[str, str]]
    changed: bool
    pods: int
    uid: str


def refresh(
    api: Any,
    namespace: str,
    name: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
    discovery_namespace: str | None = None,
    label_selector: str = DISCOVERY_SELECTOR,
    expected_pods: int | None = None,
    daemonset: str | None = None,
    grace_period: str | None = None,
    now: str | None = None,
    check_mode: bool = False,
    write: bool = True,
) -> PoolResult:
    """Aggregate the HSMPool ``namespace/name`` from its discovery pods (listed when ``pods`` is None)
    and write the status when it differs (unless ``check_mode`` or not ``write``). Expected pods:
    ``expected_pods``, else the discovery DaemonSet's desiredNumberScheduled, else the pod count."""
    obj = kube.get_object(api, POOLS, name, namespace)
    spec = obj.get("spec") or {}
    refs = spec.get("hsmDeviceRefs")
    if not isinstance(refs, list):
        raise InvalidArgument(f"HSMPool {namespace}/{name} has no spec.hsmDeviceRefs")
    if pods is None:
        pods = list(kube.iter_pods(api, discovery_namespace or namespace, label_selector))
    if expected_pods is None and daemonset:
        expected_pods = desired_pods(api, discovery_namespace or namespace, daemonset)
    previous = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    status = pool.aggregate(
        pods,
        len(pods) if expected_pods is None else expected_pods,
        grace_period or spec.get("gracePeriod") or pool.DEFAULT_GRACE_PERIOD,
        now,
        previous,
        hsm_devices=refs,
        namespace=namespace,
        generation=(obj.get("metadata") or {}).get("generation"),
    )
    devices = _hsm_devices(api, namespace, [str(r) for r in refs])
    agents, problems = pool.plan_agents(name, namespace, status, devices)
    status["conditions"] = merge_conditions(status.get("conditions"), [_agents_condition(agents, problems, obj)],
                                            now=status.get("lastAggregationTime"))
    changed = previous != status
    if write and changed:
        update = kube.update_status(
            api, POOLS.api_version, POOLS.kind, name, namespace, status=status, replace=True,
            check_mode=check_mode, now=now, resource=POOLS,
        )
        changed = update.changed
    planned = {a["name"] for a in agents}
    stale = sorted(set(agent_deployments(api, namespace, name)) - planned)
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    return PoolResult(status=status, agents=agents, stale_agents=stale, problems=problems, changed=changed,
                      pods=len(pods), uid=uid)


AGENT_SELECTOR = "app.kubernetes.io/name=hsm-agent,hsm.j5t.io/pool={pool}"


def agent_deployments(api: Any, namespace: str, pool_name: str) -> list[str]:
    """Names of the agent Deployments labelled for this pool."""
    deployments = kube.Resource("apps/v1", "Deployment", "deployments", namespaced=True, has_status=True)
    found = kube.list_objects(api, deployments, namespace, AGENT_SELECTOR.format(pool=pool_name))
    return sorted(str(d["metadata"]["name"]) for d in found)


HSMDEVICES = kube.Resource(kube.API_VERSION, "HSMDevice", "hsmdevices", namespaced=True, has_status=True)


def _hsm_devices(api: Any, namespace: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            found[name] = kube.get_object(api, HSMDEVICES, name, namespace)
        except NotFound:
            continue
    return found


def _agents_condition(
    agents: Sequence[Mapping[str, Any]], problems: Sequence[Mapping[str, str]], pool_obj: Mapping[str, Any]
) -> dict[str, Any]:
    condition: dict[str, Any] = {"type": "AgentsPlanned", "status": "True", "reason": "Planned",
                                 "message": f"{len(agents)} agent(s) planned"}
    if problems:
        text = "; ".join(f"{p['hsmDeviceName']}: {p['message']}" for p in problems)
        condition.update(status="False", reason="InvalidHSMDevice", message=text)
    generation = (pool_obj.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        condition["observedGeneration"] = generation
    return condition


def desired_pods(api: Any, namespace: str, daemonset: str) -> int | None:
    """How many pods the discovery DaemonSet wants (None when it does not exist)."""
    daemonsets = kube.Resource("apps/v1", "DaemonSet", "daemonsets", namespaced=True, has_status=True)
    try:
        obj = kube.get_object(api, daemonsets, daemonset, namespace)
    except NotFound:
        return None
    desired = (obj.get("status") or {}).get("desiredNumberScheduled")
    return desired if isinstance(desired, int) and not isinstance(desired, bool) else None
