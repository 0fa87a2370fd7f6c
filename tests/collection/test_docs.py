"""Every module of hsm.secrets has documentation ansible-doc can read (the sanity checks
`ansible-test sanity` runs in a container-free environment only partly, see docs/collection-secrets.md),
and the documented options match the module's argument spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "collections" / "ansible_collections" / "hsm" / "secrets" / "plugins" / "modules"
NAMES = sorted(p.stem for p in MODULES.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, object]]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1",
               PYTHONPATH=str(ROOT))
    ansible_doc = str(Path(sys.executable).parent / "ansible-doc")
    proc = subprocess.run([ansible_doc, "-t", "module", "-j", *[f"hsm.secrets.{n}" for n in NAMES]],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed: dict[str, dict[str, object]] = json.loads(proc.stdout)
    return parsed


@pytest.mark.parametrize("name", NAMES)
def test_module_is_documented(docs: dict[str, dict[str, object]], name: str) -> None:
    entry = docs[f"hsm.secrets.{name}"]
    doc = entry["doc"]
    assert isinstance(doc, dict)
    assert isinstance(doc.get("short_description"), str) and doc["short_description"]
    assert all(isinstance(d, str) for d in doc["description"]), "a description line parsed as a mapping"
    assert entry.get("examples") and entry.get("return") is not None


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("hsm_secret")])
def test_documented_options_match_the_argument_spec(docs: dict[str, dict[str, object]], name: str) -> None:
    """The secrets modules: every argspec option is documented and nothing else is."""
    sys.path.insert(0, str(ROOT / "collections"))
    try:
        import importlib

        module = importlib.import_module(f"ansible_collections.hsm.secrets.plugins.modules.{name}")
        captured: dict[str, object] = {}

        class Stop(Exception):
            pass

        def fake_module(**kwargs: object) -> object:
            captured.update(kwargs)
            raise Stop

        module.AnsibleModule = fake_module  # type: ignore[attr-defined]
        with pytest.raises(Stop):
            module.main()
    finally:
        sys.path.remove(str(ROOT / "collections"))
    spec = captured["argument_spec"]
    assert isinstance(spec, dict)
    doc = docs[f"hsm.secrets.{name}"]["doc"]
    assert isinstance(doc, dict)
    documented = doc["options"]
    assert isinstance(documented, dict)
    assert sorted(spec) == sorted(documented)
    for option, rules in spec.items():
        assert rules.get("type", "str") == documented[option].get("type", "str"), option
        assert rules.get("default") == documented[option].get("default"), option
