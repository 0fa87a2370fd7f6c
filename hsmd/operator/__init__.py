"""hsmd operator: the watches.yaml reconcile daemon (operator-sdk's ansible-operator, batched and fast).

How the pieces fit:

- ``watches``   reads watches.yaml (operator-sdk's schema plus our ``batch``) into ``Watch`` objects;
- ``params``    builds the extravars of a run exactly like operator-sdk (snake-cased spec,
                ``ansible_operator_meta``, ``_<group>_<kind>``), marked unsafe, plus ``hsm_batch``;
- ``informer``  lists then watches a resource (bookmarks, 410 relist, backoff) into a local cache;
- ``workqueue`` de-duplicates keys, retries with per-key exponential backoff and hands out batches;
- ``runner``    runs a role or playbook through ansible-runner in a private, rotated data dir;
- ``controller`` ties them together: finalizers, status, Events, the HSMSecret fast path
                (checksums from the agents, in-process ``hsmd.sync``), agent change streams;
- ``leader``    Lease-based leader election; ``metrics`` the Prometheus registry; ``cli`` the mode.
"""

from __future__ import annotations

import os

# The operator forks ansible-playbook (pexpect) while its gRPC channels to the agents are open.
# The children never use gRPC, so gRPC's fork handlers are not needed (and only log warnings).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
