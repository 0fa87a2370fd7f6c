"""Runs a watch's role or playbook through ansible-runner, one run per batch.

Each run gets a private data dir of its own (``env/extravars``, ``inventory/hosts``,
``project/main.yml``), removed when the run ends; its artifacts land in
``<runner-dir>/<group>/<version>/<kind>/artifacts/<ident>`` and only the newest
``maxRunnerArtifacts`` are kept (``latest`` links to the newest), like operator-sdk's runner dir.

What never reaches disk or logs: the output file (``suppress_output_file``), verbose events, and
the ``runner_on_ok`` events of the result modules (their ``res`` carries the whole batch; the
controller reads it in memory). Tasks that handle secret values set ``no_log`` in the roles; the
extravars hold only custom resources, which carry no values.

Cancellation: a shared Event; ansible-runner polls it and kills the run's process group.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

import hsmd
from hsmd.operator.launcher import PARENT_ENV, PIDFILE_ENV
from hsmd.operator.params import batch_extravars, dump_extravars, object_extravars
from hsmd.operator.watches import Watch

log = logging.getLogger("hsmd.operator.runner")

# Event types written to the artifacts; everything else is handled in memory only.
_PERSISTED_EVENTS = {
    "playbook_on_start",
    "playbook_on_play_start",
    "playbook_on_task_start",
    "runner_on_ok",
    "runner_on_failed",
    "runner_on_unreachable",
    "runner_on_skipped",
    "playbook_on_stats",
}

_SETTINGS = {"pexpect_timeout": 0.5, "suppress_ansible_output": True, "suppress_output_file": True}


@dataclass(frozen=True)
class TaskFailure:
    task: str
    action: str
    message: str
    ignored: bool = False


@dataclass
class RunResult:
    ident: str
    status: str  # successful | failed | canceled | timeout | error
    rc: int
    duration: float
    failures: list[TaskFailure] = field(default_factory=list)
    # res of every runner_on_ok event of a result action (module name -> list of results)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    artifacts: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "successful" and self.rc == 0

    def summary(self) -> str:
        if self.ok:
            return "successful"
        failed = [f for f in self.failures if not f.ignored]
        if failed:
            first = failed[0]
            return f"task {first.task!r} ({first.action}) failed: {first.message}"
        return f"ansible run {self.status} (rc {self.rc})"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class AnsibleRunner:
    """Prepares private data dirs and runs them; thread-safe, one instance per operator."""

    def __init__(
        self,
        runner_dir: Path,
        *,
        kubeconfig: str | None = None,
        collections_paths: Sequence[str] = (),
        roles_paths: Sequence[str] = (),
        ansible_config: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        result_actions: Sequence[str] = (),
        cancel: threading.Event | None = None,
        python: str = sys.executable,
        timeout: float | None = None,
    ) -> None:
        self.runner_dir = runner_dir
        self.kubeconfig = kubeconfig
        self.collections_paths = list(collections_paths)
        self.roles_paths = list(roles_paths)
        self.ansible_config = ansible_config
        self.extra_env = dict(extra_env or {})
        self.result_actions = set(result_actions)
        self.cancel = cancel or threading.Event()
        self.python = python
        self.timeout = timeout
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._active: set[str] = set()
        runner_dir.mkdir(parents=True, exist_ok=True)

    # --- preparation -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_DEPRECATION_WARNINGS": "false",
            "ANSIBLE_SYSTEM_WARNINGS": "false",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_PYTHON_INTERPRETER": self.python,
            "PYTHONDONTWRITEBYTECODE": "1",
            PARENT_ENV: str(os.getpid()),
            # the venv's ansible-playbook and modules first, whether or not the venv is activated
            "PATH": os.pathsep.join([str(Path(self.python).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            # modules import the same hsmd as this process, installed or run from a checkout
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(hsmd.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        if self.ansible_config:
            env["ANSIBLE_CONFIG"] = self.ansible_config
        collections = self.collections_paths + [
            p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":") if p
        ]
        if collections:
            env["ANSIBLE_COLLECTIONS_PATH"] = ":".join(dict.fromkeys(collections))
        roles = self.roles_paths + [p for p in os.environ.get("ANSIBLE_ROLES_PATH", "").split(":") if p]
        if roles:
            env["ANSIBLE_ROLES_PATH"] = ":".join(dict.fromkeys(roles))
        if self.kubeconfig:
            env["K8S_AUTH_KUBECONFIG"] = self.kubeconfig
            env["KUBECONFIG"] = self.kubeconfig
        env.update(self.extra_env)
        return env

    def _ansible_playbook(self) -> str:
        local = Path(self.python).parent / "ansible-playbook"
        return str(local) if local.exists() else (shutil.which("ansible-playbook") or "ansible-playbook")

    @staticmethod
    def _playbook_for_role(role: str, tasks_from: str | None) -> str:
        # JSON is YAML: quoting through json.dumps keeps odd paths intact.
        if tasks_from:
            task = {
                "name": f"Run {Path(role).name} ({tasks_from})",
                "ansible.builtin.import_role": {"name": role, "tasks_from": tasks_from},
            }
            play: dict[str, Any] = {"hosts": "localhost", "gather_facts": False, "tasks": [task]}
        else:
            play = {"hosts": "localhost", "gather_facts": False, "roles": [{"role": role}]}
        return json.dumps([play], indent=1) + "\n"

    def _artifact_root(self, watch: Watch) -> Path:
        return self.runner_dir / (watch.group or "core") / watch.version / watch.kind / "artifacts"

    def _rotate(self, root: Path, keep: int) -> None:
        with self._lock:
            active = set(self._active)
        try:
            entries = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name not in active]
        except FileNotFoundError:
            return
        entries.sort(key=lambda p: p.stat().st_mtime)
        for old in entries[: max(0, len(entries) - keep)]:
            shutil.rmtree(old, ignore_errors=True)

    # --- running -----------------------------------------------------------------------------

    def run(
        self,
        watch: Watch,
        objects: Sequence[Mapping[str, Any]],
        *,
        finalizer_run: bool = False,
        extra_vars: Mapping[str, Any] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunResult:
        """Run the watch's role/playbook (or its finalizer's) for ``objects`` and wait for it."""
        if not objects:
            raise ValueError("a run needs at least one object")
        ident = f"{int(time.time())}-{os.getpid()}-{next(self._seq)}"
        if watch.batch is not None:
            params = batch_extravars(watch, objects, finalizer_run=finalizer_run)
        else:
            if len(objects) != 1:
                raise ValueError(f"{watch.kind} has no batch setting; one object per run")
            params = object_extravars(watch, objects[0], finalizer_run=finalizer_run)
        for key, value in (extra_vars or {}).items():
            params.setdefault(key, value)

        role, playbook, tasks_from = watch.role, watch.playbook, None
        if finalizer_run and watch.finalizer is not None:
            fin = watch.finalizer
            if fin.role or fin.playbook:
                role, playbook = fin.role, fin.playbook
            tasks_from = fin.tasks_from

        artifact_root = self._artifact_root(watch)
        artifact_root.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=f"{watch.kind.lower()}-", dir=self.runner_dir))
        try:
            (private / "env").mkdir()
            (private / "inventory").mkdir()
            (private / "project").mkdir()
            extravars = private / "env" / "extravars"
            fd = os.open(extravars, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(dump_extravars(params))
            # ansible-runner reads its settings from this file only (a settings= argument is dropped
            # when the file is absent): poll cancel twice a second, keep stdout off the disk.
            (private / "env" / "settings").write_text(json.dumps(_SETTINGS))
            (private / "inventory" / "hosts").write_text(
                f"localhost ansible_connection=local ansible_python_interpreter={self.python}\n"
            )
            if role:
                (private / "project" / "main.yml").write_text(self._playbook_for_role(role, tasks_from))
                playbook_path = str(private / "project" / "main.yml")
            else:
                assert playbook is not None
                playbook_path = playbook
            return self._execute(watch, ident, private, artifact_root, playbook_path, on_event)
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _execute(
        self,
        watch: Watch,
        ident: str,
        private: Path,
        artifact_root: Path,
        playbook: str,
        on_event: Callable[[dict[str, Any]], None] | None,
    ) -> RunResult:
        failures: list[TaskFailure] = []
        results: dict[str, list[dict[str, Any]]] = {}
        errors: list[str] = []  # ansible's own error lines (a playbook that does not parse, ...)

        def handle(event: dict[str, Any]) -> bool:
            kind = event.get("event", "")
            if kind in ("verbose", "error"):
                text = str(event.get("stdout") or "").strip()
                if "ERROR" in text and len(errors) < 5:
                    errors.append(text[:500])
            data = event.get("event_data") or {}
            action = str(data.get("resolved_action") or data.get("task_action") or "")
            wanted = action in self.result_actions or data.get("task_action") in self.result_actions
            if kind in ("runner_on_ok", "runner_on_failed") and wanted:
                res = dict(data.get("res") or {})
                res.pop("invocation", None)
                short = action.rsplit(".", 1)[-1]
                results.setdefault(short, []).append(res)
                if kind == "runner_on_ok":
                    if on_event is not None:
                        on_event(event)
                    return False  # consumed in memory; the batch need not be on disk
            if kind in ("runner_on_failed", "runner_on_unreachable"):
                res = data.get("res") or {}
                message = str(res.get("msg") or res.get("reason") or "failed")
                if res.get("censored"):
                    message = "failed (output hidden by no_log)"
                failures.append(
                    TaskFailure(
                        task=str(data.get("task") or ""),
                        action=action,
                        message=message[:2000],
                        ignored=bool(data.get("ignore_errors")),
                    )
                )
            if on_event is not None:
                on_event(event)
            if kind not in _PERSISTED_EVENTS:
                return False
            # What reaches the artifacts: task names, outcomes and failures; not the results of
            # tasks that went fine (they can hold whole batches) nor any module's arguments.
            outcome = data.get("res")
            if isinstance(outcome, dict):
                if kind in ("runner_on_ok", "runner_on_skipped"):
                    data["res"] = {k: outcome[k] for k in ("changed", "skipped", "skip_reason") if k in outcome}
                    event["stdout"] = str(event.get("stdout") or "").split("\n", 1)[0]
                else:
                    outcome.pop("invocation", None)
            return True

        with self._lock:
            self._active.add(ident)
        started = time.monotonic()
        status, rc = "error", -1
        pidfile = private / "launcher.pid"
        env = self._env()
        env[PIDFILE_ENV] = str(pidfile)

        def should_stop() -> bool:
            """Cancel (shutdown) or timeout: the launcher kills every process of the run; ansible-
            runner's own process-group kill would miss ansible's workers (own sessions)."""
            timed_out = self.timeout is not None and time.monotonic() - started > self.timeout
            if not (self.cancel.is_set() or timed_out):
                return False
            with contextlib.suppress(OSError, ValueError):
                launcher = int(pidfile.read_text())
                os.kill(launcher, signal.SIGTERM)
                # let it finish its work before ansible-runner's SIGKILL of the group can cut it short
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and _running(launcher):
                    time.sleep(0.02)
            return True

        try:
            runner = ansible_runner.run(
                private_data_dir=str(private),
                artifact_dir=str(artifact_root),
                ident=ident,
                playbook=playbook,
                # ansible-playbook under hsmd.operator.launcher: the run dies with the operator
                binary=self.python,
                cmdline=shlex.join(["-m", "hsmd.operator.launcher", self._ansible_playbook(), playbook]),
                inventory=str(private / "inventory" / "hosts"),
                envvars=env,
                verbosity=watch.ansible_verbosity or None,
                quiet=True,
                suppress_output_file=True,
                suppress_env_files=True,
                rotate_artifacts=0,  # rotated below, never touching runs still in flight
                event_handler=handle,
                cancel_callback=should_stop,
            )
            status, rc = str(runner.status), int(runner.rc if runner.rc is not None else -1)
        except Exception as exc:  # a broken runner setup must fail the batch, not the worker
            log.error("ansible-runner failed to start", extra={"kind": watch.kind, "ident": ident, "error": str(exc)})
            failures.append(TaskFailure(task="", action="ansible-runner", message=str(exc)[:2000]))
        finally:
            with self._lock:
                self._active.discard(ident)
        duration = time.monotonic() - started
        if status != "successful" and not failures and errors:
            failures.append(TaskFailure(task="", action="ansible-playbook", message=" | ".join(errors)))
        latest = artifact_root / "latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(ident)
        except OSError:
            pass
        self._rotate(artifact_root, watch.max_runner_artifacts)
        return RunResult(
            ident=ident,
            status=status,
            rc=rc,
            duration=duration,
            failures=failures,
            results=results,
            artifacts=str(artifact_root / ident),
        )
