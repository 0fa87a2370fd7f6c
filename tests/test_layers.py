"""STYLE.md point 2, enforced: each third-party library is imported only in its own layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HSMD = ROOT / "hsmd"

# library (top-level import name) -> hsmd packages/modules allowed to import it
ROOMS: dict[str, tuple[str, ...]] = {
    "PyKCS11": ("hsmd.pkcs11",),
    "grpc": ("hsmd.agent", "hsmd.proto"),
    "grpc_health": ("hsmd.agent",),
    "grpc_tools": ("hsmd.proto.generate",),
    "google": ("hsmd.agent", "hsmd.proto"),
    "flask": ("hsmd.proxy",),
    "waitress": ("hsmd.proxy",),
    "pyudev": ("hsmd.discovery",),
    "ansible_runner": ("hsmd.operator",),
    "ansible": (),
    "apscheduler": ("hsmd.operator",),
    "prometheus_client": ("hsmd.operator", "hsmd.agent", "hsmd.proxy"),
    "kubernetes": ("hsmd.kube", "hsmd.operator", "hsmd.proxy", "hsmd.sandbox", "hsmd.sync", "hsmd.hsmctl",
                   "hsmd.dev", "hsmd.discovery"),
}
# Pure decision modules: no third-party I/O library at all.
PURE = ("hsmd.model", "hsmd.errors", "hsmd.policy", "hsmd.pool", "hsmd.render", "hsmd.status")
PURE_ALLOWED = {"yaml"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _within(module: str, rooms: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in rooms)


def test_each_library_stays_in_its_room() -> None:
    offences = []
    for path in sorted(HSMD.rglob("*.py")):
        module = _module_name(path)
        for lib in _imports(path):
            if lib in ROOMS and not _within(module, ROOMS[lib]):
                offences.append(f"{module} imports {lib} (allowed only in {', '.join(ROOMS[lib]) or 'none'})")
    assert not offences, "\n".join(offences)


def test_pure_modules_do_no_io() -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    offences = []
    for path in sorted(HSMD.rglob("*.py")):
        module = _module_name(path)
        if not _within(module, PURE):
            continue
        for lib in _imports(path):
            if lib not in stdlib and lib != "hsmd" and lib not in PURE_ALLOWED:
                offences.append(f"{module} imports {lib}")
    assert not offences, "\n".join(offences)


def test_modules_reach_hsmd_only_through_module_utils() -> None:
    collection = ROOT / "collections" / "ansible_collections" / "hsm" / "secrets" / "plugins"
    offences = []
    for path in sorted(collection.rglob("*.py")) if collection.exists() else []:
        if path.name == "_hsmd.py":
            continue
        for lib in _imports(path):
            if lib in ("hsmd", "PyKCS11", "grpc", "kubernetes"):
                offences.append(f"{path.relative_to(ROOT)} imports {lib} directly; use module_utils/_hsmd.py")
    assert not offences, "\n".join(offences)
