"""The I/O half of HSMPool aggregation: read the pool and the discovery pods, aggregate, write status.

``hsmd.pool.aggregate`` decides; this module only fetches its inputs and applies its output
through ``hsmd.kube`` (so the hsm_pool module, the hsm_pool role and the operator share it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hsmd import kube, pool
from hsmd.errors import InvalidArgument

DISCOVERY_SELECTOR = "app.kubernetes.io/component=discovery"
POOLS = kube.Resource(kube.API_VERSION, "HSMPool", "hsmpools", namespaced=True, has_status=True)


@dataclass(frozen=True)
class PoolResult:
    status: dict[str, Any]
    agents: list[dict[str, str]]
    changed: bool
    pods: int


def refresh(
    api: Any,
    namespace: str,
    name: str,
    *,
    pods: Sequence[Mapping[str, Any]] | None = None,
    discovery_namespace: str | None = None,
    label_selector: str = DISCOVERY_SELECTOR,
    expected_pods: int | None = None,
    grace_period: str | None = None,
    now: str | None = None,
    check_mode: bool = False,
    write: bool = True,
) -> PoolResult:
    """Aggregate the HSMPool ``namespace/name`` from its discovery pods (listed when ``pods`` is None)
    and write the status when it differs (unless ``check_mode`` or not ``write``)."""
    obj = kube.get_object(api, POOLS, name, namespace)
    spec = obj.get("spec") or {}
    refs = spec.get("hsmDeviceRefs")
    if not isinstance(refs, list):
        raise InvalidArgument(f"HSMPool {namespace}/{name} has no spec.hsmDeviceRefs")
    if pods is None:
        pods = list(kube.iter_pods(api, discovery_namespace or namespace, label_selector))
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
    changed = previous != status
    if write and changed:
        update = kube.update_status(
            api, POOLS.api_version, POOLS.kind, name, namespace, status=status, replace=True,
            check_mode=check_mode, now=now, resource=POOLS,
        )
        changed = update.changed
    return PoolResult(status=status, agents=pool.agent_plan(name, status), changed=changed, pods=len(pods))
