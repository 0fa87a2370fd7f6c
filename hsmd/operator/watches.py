"""watches.yaml: which kinds the operator watches and which role or playbook reconciles each.

The schema is operator-sdk's (ansible-operator): group, version, kind, role | playbook, vars,
maxRunnerArtifacts, reconcilePeriod, manageStatus, watchDependentResources,
watchClusterScopedResources, watchAnnotationsChanges, snakeCaseParameters, markUnsafe, selector,
blacklist, finalizer {name, role | playbook, vars}; ``${VAR}`` references are replaced from the
environment; ``MAX_CONCURRENT_RECONCILES_<KIND>_<GROUP>`` (or the older ``WORKER_<KIND>_<GROUP>``)
and ``ANSIBLE_VERBOSITY_<KIND>_<GROUP>`` override per kind. Two differences, both deliberate:
``markUnsafe`` defaults to true (Jinja in a CR field is never evaluated), and an unknown key is an
error instead of being ignored silently (a typo such as ``reconcilePeriods`` would otherwise turn
a setting off without a word). Our one addition is ``batch: {maxSize, maxWait}``: many objects in
one run, passed to the role as ``hsm_batch``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsmd.errors import InvalidArgument

_KNOWN_KEYS = {
    "group", "version", "kind", "role", "playbook", "vars", "maxRunnerArtifacts", "reconcilePeriod",
    "manageStatus", "watchDependentResources", "watchClusterScopedResources", "watchAnnotationsChanges",
    "snakeCaseParameters", "markUnsafe", "selector", "blacklist", "finalizer", "batch",
}
_FINALIZER_KEYS = {"name", "role", "playbook", "vars", "tasksFrom"}
_BATCH_KEYS = {"maxSize", "maxWait"}
_SELECTOR_KEYS = {"matchLabels", "matchExpressions"}
_SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}

DEFAULT_MAX_RUNNER_ARTIFACTS = 20
DEFAULT_ANSIBLE_VERBOSITY = 2  # operator-sdk's --ansible-verbosity default
DEFAULT_BATCH_MAX_SIZE = 500
DEFAULT_BATCH_MAX_WAIT = 1.0


@dataclass(frozen=True)
class Finalizer:
    name: str
    role: str | None = None  # resolved absolute path of the role directory
    playbook: str | None = None  # resolved absolute path of the playbook
    vars: Mapping[str, Any] = field(default_factory=dict)
    # Our extension: run ``tasks/<tasksFrom>.yml`` of the role instead of its main tasks (so one
    # role holds both reconcile and finalize, as role hsm_secret does with tasks/finalize.yml).
    tasks_from: str | None = None


@dataclass(frozen=True)
class Batch:
    max_size: int = DEFAULT_BATCH_MAX_SIZE
    max_wait: float = DEFAULT_BATCH_MAX_WAIT


@dataclass(frozen=True)
class Watch:
    group: str
    version: str
    kind: str
    role: str | None = None
    playbook: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    max_runner_artifacts: int = DEFAULT_MAX_RUNNER_ARTIFACTS
    reconcile_period: float = 0.0
    manage_status: bool = True
    watch_dependent_resources: bool = True
    watch_cluster_scoped_resources: bool = False
    watch_annotations_changes: bool = False
    snake_case_parameters: bool = True
    mark_unsafe: bool = True
    selector: str = ""
    blacklist: tuple[tuple[str, str, str], ...] = ()
    finalizer: Finalizer | None = None
    batch: Batch | None = None
    max_concurrent_reconciles: int = 1
    ansible_verbosity: int = DEFAULT_ANSIBLE_VERBOSITY

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> str:
        return f"{self.api_version}, Kind={self.kind}"

    @property
    def object_key(self) -> str:
        """The extravar holding the whole object, e.g. ``_hsm_j5t_io_hsmsecret``."""
        return escape_ansible_key(f"_{self.group}_{self.kind.lower()}")


def escape_ansible_key(key: str) -> str:
    """operator-sdk: '.' and '-' make a variable unreachable in Jinja; they become '_'."""
    return key.replace(".", "_").replace("-", "_")


def env_suffix(kind: str, group: str) -> str:
    """``<KIND>_<GROUP>`` as operator-sdk spells it: upper case, dots replaced by underscores."""
    return f"{kind}_{group}".replace(".", "_").upper()


def max_concurrent_env(kind: str, group: str) -> tuple[str, str]:
    suffix = env_suffix(kind, group)
    return f"MAX_CONCURRENT_RECONCILES_{suffix}", f"WORKER_{suffix}"


def verbosity_env(kind: str, group: str) -> str:
    return f"ANSIBLE_VERBOSITY_{env_suffix(kind, group)}"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, where: str) -> float:
    """A Go duration ("30s", "1m30s", "500ms", "2h") in seconds; a bare number is seconds."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: expected a duration such as '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"{where}: a duration cannot be negative")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}: expected a duration such as '30s' or '5m', got {value!r}")
    text = value.strip()
    if text == "0":
        return 0.0
    if text.startswith("-"):
        raise InvalidArgument(f"{where}: a duration cannot be negative ({value!r})")
    text = text.lstrip("+")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise InvalidArgument(f"{where}: {value!r} is not a duration (use e.g. '30s', '1m30s', '500ms', '2h')")
    return total


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``$VAR`` like operator-sdk (os.Expand); undefined references stay as written."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return environ[name] if name in environ else "${" + name + "}"

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def label_selector(raw: object, where: str) -> str:
    """A metav1.LabelSelector (matchLabels + matchExpressions) as a selector string for list/watch."""
    if raw is None or raw == {}:
        return ""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: must be a mapping with matchLabels and/or matchExpressions")
    unknown = set(raw) - _SELECTOR_KEYS
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_SELECTOR_KEYS)}")
    parts: list[str] = []
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise InvalidArgument(f"{where}.matchLabels: must be a mapping of label to value")
    for key in sorted(labels):
        parts.append(f"{key}={labels[key]}")
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidArgument(f"{where}.matchExpressions: must be a list")
    for index, expr in enumerate(expressions):
        at = f"{where}.matchExpressions[{index}]"
        if not isinstance(expr, dict) or not isinstance(expr.get("key"), str) or not expr.get("key"):
            raise InvalidArgument(f"{at}: needs a 'key'")
        op = expr.get("operator")
        values = expr.get("values") or []
        if op not in _SELECTOR_OPERATORS:
            raise InvalidArgument(f"{at}: operator must be one of {sorted(_SELECTOR_OPERATORS)}, got {op!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{at}: values must be a list of strings")
        key = expr["key"]
        if op in ("In", "NotIn"):
            if not values:
                raise InvalidArgument(f"{at}: operator {op} needs at least one value")
            parts.append(f"{key} {'in' if op == 'In' else 'notin'} ({','.join(values)})")
        else:
            if values:
                raise InvalidArgument(f"{at}: operator {op} takes no values")
            parts.append(key if op == "Exists" else f"!{key}")
    return ",".join(parts)


def _bool(raw: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgument(f"{where}.{key}: must be true or false, got {value!r}")
    return value


def _vars(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    value = raw.get("vars") or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidArgument(f"{where}.vars: must be a mapping of variable name to value")
    return dict(value)


def candidate_role_paths(
    role: str, base_dir: Path, environ: Mapping[str, str], extra_collection_paths: Sequence[Path] = ()
) -> list[Path]:
    """Where a role named in watches.yaml may live, in operator-sdk's order: an absolute path; for a
    fully qualified name (ns.collection.role) the collection paths; ANSIBLE_ROLES_PATH (with and
    without a ``roles`` component); ``roles/<role>`` next to watches.yaml (and in the working dir)."""
    if os.path.isabs(role):
        return [Path(role)]
    out: list[Path] = []
    fqcn = role.split(".")
    if len(fqcn) == 3:
        collection_paths = [p for p in environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":") if p]
        collection_paths += [p for p in environ.get("ANSIBLE_COLLECTIONS_PATHS", "").split(":") if p]
        collection_paths += [str(p) for p in extra_collection_paths]
        if not collection_paths:
            collection_paths = ["/usr/share/ansible/collections", str(Path.home() / ".ansible/collections")]
        for parent in collection_paths:
            out.append(Path(parent) / "ansible_collections" / fqcn[0] / fqcn[1] / "roles" / fqcn[2])
    for parent in (p for p in environ.get("ANSIBLE_ROLES_PATH", "").split(":") if p):
        out.append(Path(parent) / role)
        out.append(Path(parent) / "roles" / role)
    out.append(base_dir / "roles" / role)
    out.append(Path.cwd() / "roles" / role)
    return out


def _resolve_role(role: object, where: str, base_dir: Path, environ: Mapping[str, str],
                  collections: Sequence[Path]) -> str:
    if not isinstance(role, str) or not role:
        raise InvalidArgument(f"{where}: role must be a non-empty string")
    candidates = candidate_role_paths(role, base_dir, environ, collections)
    for path in candidates:
        if path.is_dir():
            return str(path.resolve())
    tried = ", ".join(str(p) for p in candidates)
    raise InvalidArgument(f"{where}: role {role!r} was not found (looked in {tried})")


def _role_or_playbook(raw: Mapping[str, Any], where: str, base_dir: Path, environ: Mapping[str, str],
                      collections: Sequence[Path]) -> tuple[str | None, str | None]:
    """(role, playbook) of a watch or finalizer entry: at most one of them, resolved; (None, None)
    when neither is given (whether that is allowed is the caller's rule)."""
    if raw.get("role") and raw.get("playbook"):
        raise InvalidArgument(f"{where}: give either role or playbook, not both")
    if raw.get("playbook"):
        return None, _resolve_playbook(raw["playbook"], where, base_dir)
    if raw.get("role"):
        return _resolve_role(raw["role"], where, base_dir, environ, collections), None
    return None, None


def _resolve_playbook(playbook: object, where: str, base_dir: Path) -> str:
    if not isinstance(playbook, str) or not playbook:
        raise InvalidArgument(f"{where}: playbook must be a non-empty string")
    path = Path(playbook) if os.path.isabs(playbook) else base_dir / playbook
    if not path.is_file():
        raise InvalidArgument(f"{where}: playbook {playbook!r} was not found ({path})")
    return str(path.resolve())


def _positive_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{where}: must be a positive integer, got {value!r}")
    return value


def _env_int(environ: Mapping[str, str], names: Sequence[str], default: int, *, minimum: int) -> int:
    for name in names:
        if name in environ:
            try:
                value = int(environ[name])
            except ValueError:
                raise InvalidArgument(f"environment variable {name}: not an integer ({environ[name]!r})") from None
            if value < minimum:
                raise InvalidArgument(f"environment variable {name}: must be >= {minimum}, got {value}")
            return value
    return default


def parse_watch(
    raw: object,
    index: int,
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    default_max_concurrent: int,
    default_verbosity: int,
    collection_paths: Sequence[Path] = (),
) -> Watch:
    where = f"watches[{index}]"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: must be a mapping")
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_KNOWN_KEYS)}")
    group = raw.get("group") or ""
    version, kind = raw.get("version"), raw.get("kind")
    if not isinstance(group, str):
        raise InvalidArgument(f"{where}.group: must be a string")
    if not isinstance(version, str) or not version:
        raise InvalidArgument(f"{where}: version must not be empty")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument(f"{where}: kind must not be empty")
    where = f"{where} ({kind})"
    role, playbook = _role_or_playbook(raw, where, base_dir, environ, collection_paths)
    if role is None and playbook is None:
        raise InvalidArgument(f"{where}: must specify role or playbook")

    finalizer = None
    if raw.get("finalizer") is not None:
        fin = raw["finalizer"]
        fwhere = f"{where}.finalizer"
        if not isinstance(fin, dict):
            raise InvalidArgument(f"{fwhere}: must be a mapping")
        unknown = set(fin) - _FINALIZER_KEYS
        if unknown:
            raise InvalidArgument(f"{fwhere}: unknown field(s) {sorted(unknown)}; known: {sorted(_FINALIZER_KEYS)}")
        if not isinstance(fin.get("name"), str) or not fin.get("name"):
            raise InvalidArgument(f"{fwhere}: finalizer must have a name")
        fvars = _vars(fin, fwhere)
        frole, fplaybook = _role_or_playbook(fin, fwhere, base_dir, environ, collection_paths)
        if frole is None and fplaybook is None and not fvars:
            # operator-sdk: without its own role/playbook a finalizer reuses the watch's with its vars
            raise InvalidArgument(f"{fwhere}: needs a role, a playbook or vars")
        tasks_from = fin.get("tasksFrom")
        if tasks_from is not None:
            if not isinstance(tasks_from, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", tasks_from):
                raise InvalidArgument(f"{fwhere}.tasksFrom: must be a task file name such as 'finalize'")
            target_role = frole or (role if not fplaybook else None)
            if target_role is None:
                raise InvalidArgument(f"{fwhere}.tasksFrom: only applies to a role")
            stem = tasks_from[:-4] if tasks_from.endswith(".yml") else tasks_from
            if not any((Path(target_role) / "tasks" / f"{stem}{ext}").is_file() for ext in (".yml", ".yaml")):
                raise InvalidArgument(f"{fwhere}.tasksFrom: {target_role}/tasks/{stem}.yml does not exist")
            tasks_from = stem
        finalizer = Finalizer(name=fin["name"], role=frole, playbook=fplaybook, vars=fvars, tasks_from=tasks_from)

    batch = None
    if raw.get("batch") is not None:
        braw = raw["batch"]
        bwhere = f"{where}.batch"
        if not isinstance(braw, dict):
            raise InvalidArgument(f"{bwhere}: must be a mapping with maxSize and maxWait")
        unknown = set(braw) - _BATCH_KEYS
        if unknown:
            raise InvalidArgument(f"{bwhere}: unknown field(s) {sorted(unknown)}; known: {sorted(_BATCH_KEYS)}")
        batch = Batch(
            max_size=_positive_int(braw.get("maxSize", DEFAULT_BATCH_MAX_SIZE), f"{bwhere}.maxSize"),
            max_wait=parse_duration(braw.get("maxWait", DEFAULT_BATCH_MAX_WAIT), f"{bwhere}.maxWait"),
        )

    blacklist: list[tuple[str, str, str]] = []
    for bindex, entry in enumerate(raw.get("blacklist") or []):
        if not isinstance(entry, dict) or not entry.get("kind"):
            raise InvalidArgument(f"{where}.blacklist[{bindex}]: needs group, version and kind")
        blacklist.append((str(entry.get("group") or ""), str(entry.get("version") or ""), str(entry["kind"])))

    max_runner_artifacts = raw.get("maxRunnerArtifacts") or DEFAULT_MAX_RUNNER_ARTIFACTS
    max_runner_artifacts = _positive_int(max_runner_artifacts, f"{where}.maxRunnerArtifacts")
    reconcile_period = 0.0
    if raw.get("reconcilePeriod") is not None:
        reconcile_period = parse_duration(raw["reconcilePeriod"], f"{where}.reconcilePeriod")

    return Watch(
        group=group,
        version=version,
        kind=kind,
        role=role,
        playbook=playbook,
        vars=_vars(raw, where),
        max_runner_artifacts=max_runner_artifacts,
        reconcile_period=reconcile_period,
        manage_status=_bool(raw, "manageStatus", True, where),
        watch_dependent_resources=_bool(raw, "watchDependentResources", True, where),
        watch_cluster_scoped_resources=_bool(raw, "watchClusterScopedResources", False, where),
        watch_annotations_changes=_bool(raw, "watchAnnotationsChanges", False, where),
        snake_case_parameters=_bool(raw, "snakeCaseParameters", True, where),
        mark_unsafe=_bool(raw, "markUnsafe", True, where),
        selector=label_selector(raw.get("selector"), f"{where}.selector"),
        blacklist=tuple(blacklist),
        finalizer=finalizer,
        batch=batch,
        max_concurrent_reconciles=_env_int(
            environ, max_concurrent_env(kind, group), default_max_concurrent, minimum=1
        ),
        ansible_verbosity=_env_int(environ, [verbosity_env(kind, group)], default_verbosity, minimum=0),
    )


def load_watches(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    default_max_concurrent: int = 1,
    default_verbosity: int = DEFAULT_ANSIBLE_VERBOSITY,
    collection_paths: Sequence[Path] = (),
) -> list[Watch]:
    """Read and validate a watches.yaml; every error names the entry and the field."""
    env = os.environ if environ is None else environ
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read watches file {file}: {exc.strerror}") from None
    return parse_watches(
        text,
        base_dir=file.resolve().parent,
        environ=env,
        default_max_concurrent=default_max_concurrent,
        default_verbosity=default_verbosity,
        collection_paths=collection_paths,
        source=str(file),
    )


def parse_watches(
    text: str,
    *,
    base_dir: Path,
    environ: Mapping[str, str],
    default_max_concurrent: int = 1,
    default_verbosity: int = DEFAULT_ANSIBLE_VERBOSITY,
    collection_paths: Sequence[Path] = (),
    source: str = "watches.yaml",
) -> list[Watch]:
    try:
        doc = yaml.safe_load(expand_env(text, environ))
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, list) or not doc:
        raise InvalidArgument(f"{source}: must be a non-empty list of watches")
    watches: list[Watch] = []
    seen: set[tuple[str, str, str]] = set()
    for index, raw in enumerate(doc):
        try:
            watch = parse_watch(
                raw,
                index,
                base_dir=base_dir,
                environ=environ,
                default_max_concurrent=default_max_concurrent,
                default_verbosity=default_verbosity,
                collection_paths=collection_paths,
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"{source}: {exc}") from None
        gvk = (watch.group, watch.version, watch.kind)
        if gvk in seen:
            raise InvalidArgument(f"{source}: duplicate watch for {watch.gvk}")
        seen.add(gvk)
        watches.append(watch)
    return watches
