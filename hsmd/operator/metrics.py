"""The operator's Prometheus metrics, in a registry of its own, served on --metrics-listen."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_RUN_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
_RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_total = Counter(
            "hsmd_reconcile_total", "Objects reconciled, by kind and result", ["kind", "result"], registry=r
        )
        self.reconcile_duration = Histogram(
            "hsmd_reconcile_duration_seconds", "Time from dequeue to result, per batch", ["kind", "path"],
            buckets=_RECONCILE_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("hsmd_queue_depth", "Keys waiting in a work queue", ["queue"], registry=r)
        self.ansible_run_seconds = Histogram(
            "hsmd_ansible_run_seconds", "Duration of ansible-runner runs", ["kind", "result"],
            buckets=_RUN_BUCKETS, registry=r,
        )
        self.ansible_runs_total = Counter(
            "hsmd_ansible_runs_total", "ansible-runner runs started", ["kind", "purpose"], registry=r
        )
        self.secret_last_sync = Gauge(
            "hsmd_secret_last_sync_timestamp_seconds", "lastSyncTime of each HSMSecret (Unix time)",
            ["namespace", "name"], registry=r,
        )
        self.resync_total = Counter(
            "hsmd_resync_total", "Periodic checksum resyncs, and objects they found out of date", ["outcome"],
            registry=r,
        )
        self.resync_seconds = Histogram(
            "hsmd_resync_duration_seconds", "Duration of one periodic checksum resync", buckets=_RECONCILE_BUCKETS,
            registry=r,
        )
        self.change_events_total = Counter(
            "hsmd_agent_change_events_total", "Change events received from agents", ["kind"], registry=r
        )
        self.watch_relists_total = Counter(
            "hsmd_watch_relists_total", "Full lists by the watchers (start-up and after 410 Gone)", ["resource"],
            registry=r,
        )
        self.leader = Gauge("hsmd_leader", "1 while this replica is the leader", registry=r)

    def serve(self, listen: str) -> str:
        """Serve /metrics on HOST:PORT (port 0 allowed); returns the bound HOST:PORT."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        bound_host, bound_port = server.server_address[:2]
        self._server = server
        return f"{bound_host!s}:{bound_port}"

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
