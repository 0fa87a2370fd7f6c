"""Run playbooks the way the operator does (real ansible-runner, real ansible-playbook, this checkout's
ansible.cfg, collection and roles) and look at what they left behind.

``run_playbook(workdir, plays, extravars=...)`` writes the plays to a private data dir, runs them and
returns a ``PlaybookRun`` with the task results by task name (from the runner's job events) and
helpers to grep everything the run wrote (stdout, job events, artifacts) for secret values.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)


@dataclass
class PlaybookRun:
    rc: int
    status: str
    stdout: str
    private_dir: Path
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task name -> res per host/item
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def result(self, task: str) -> dict[str, Any]:
        assert task in self.results, f"task {task!r} has no ok result; failed: {list(self.failed)}\n{self.stdout[-4000:]}"
        return self.results[task][0]

    def written_text(self) -> str:
        """Everything the run wrote (stdout, job events, artifacts), as one string. The inputs (project/,
        env/) are not included: they are the test's own files."""
        parts = [self.stdout]
        for path in sorted((self.private_dir / "artifacts").rglob("*")):
            if path.is_file():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def assert_never_wrote(self, values: Iterable[bytes | str]) -> None:
        text = self.written_text()
        for value in values:
            raw = value.encode() if isinstance(value, str) else value
            for shown in {raw.decode(errors="replace"), base64.b64encode(raw).decode()}:
                assert shown not in text, "a secret value reached the run's output or artifacts"


def run_playbook(
    workdir: Path,
    plays: Sequence[Mapping[str, Any]] | str,
    *,
    extravars: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    diff: bool = False,
    timeout: int = 240,
) -> PlaybookRun:
    """One ansible-playbook run through ansible-runner with the repository's ansible.cfg and inventory."""
    private = Path(workdir)
    (private / "project").mkdir(parents=True, exist_ok=True)
    text = plays if isinstance(plays, str) else yaml.safe_dump(list(plays), sort_keys=False)
    (private / "project" / "main.yml").write_text(text)
    cmdline = " ".join(filter(None, ["--check" if check else "", "--diff" if diff else ""]))
    envvars = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        # the modules import hsmd from this checkout (installed by `make setup` as well)
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        **(env or {}),
    }
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = envvars["PATH"]  # ansible-runner looks ansible-playbook up on this process's PATH
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook="main.yml",
            inventory=str(ROOT / "inventory" / "hosts.yml"),
            extravars=dict(extravars or {}),
            envvars=envvars,
            cmdline=cmdline or None,
            quiet=True,
            timeout=timeout,
        )
    finally:
        os.environ["PATH"] = old_path
    stdout = runner.stdout.read() if runner.stdout else ""
    out = PlaybookRun(rc=runner.rc, status=runner.status, stdout=stdout, private_dir=private)
    for event in runner.events:
        data = event.get("event_data") or {}
        task = str(data.get("task") or "")
        if event.get("event") == "runner_on_ok":
            out.results.setdefault(task, []).append(dict(data.get("res") or {}))
        elif event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
            out.failed[task] = dict(data.get("res") or {})
        elif event.get("event") == "runner_on_failed":
            out.results.setdefault(task, []).append({**(data.get("res") or {}), "failed": True})
    return out


def localhost_play(tasks: list[dict[str, Any]], **play: Any) -> dict[str, Any]:
    return {"name": "test", "hosts": "localhost", "gather_facts": False, **play, "tasks": tasks}


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
