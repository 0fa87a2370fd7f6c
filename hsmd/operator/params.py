"""The extravars of a run, built exactly like operator-sdk's ansible-operator builds them.

For one object: the spec with snake_cased keys as top-level variables, ``ansible_operator_meta``
{name, namespace}, ``_<group>_<kind>`` (the whole object, group dots/dashes as '_') and
``_<group>_<kind>_spec``, then the watch's ``vars`` and, on a finalizer run, the finalizer's
``vars``. Our batch addition: ``hsm_batch``, the list of objects of one run.

markUnsafe: CR fields are user input; Ansible must never evaluate Jinja in them. operator-sdk
wraps every string as ``{"__ansible_unsafe": s}`` in the extravars JSON, which Ansible decodes to an
unsafe (never templated) string. We do the same, but only for strings that contain '{': every Jinja
delimiter ({{, {%, {#) starts with it, so a string without one is inert, and wrapping the rest
costs Ansible ~1 s per 1,000 objects when it loads the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hsmd.operator.watches import Watch

BATCH_VAR = "hsm_batch"
UNSAFE_KEY = "__ansible_unsafe"

_WORD_MAPPING = {"http": "HTTP", "url": "URL", "ip": "IP"}
_NUMBER_SEQUENCE = re.compile(r"([a-zA-Z])(\d+)([a-zA-Z](\d+))")


def _preprocess_word_mapping(value: str) -> str:
    """Isolate the special words (HTTP, URL, IP, and their plurals) with '_' so they snake as one word."""
    for word in _WORD_MAPPING.values():
        idx = value.find(word)
        if idx < 0:
            continue
        end = idx + len(word)
        if end == len(value):
            value = value[:idx] + "_" + value[idx:]
        elif value[end] == "s":
            if end == len(value) - 1:
                value = value[:idx] + "_" + value[idx:end] + "S"
            elif idx == 0:
                value = value[:end] + "S" + "_" + value[end + 1 :]
            else:
                value = value[:idx] + "_" + value[idx:end] + "S" + "_" + value[end + 1 :]
        elif idx == 0:
            value = value[:end] + "_" + value[end:]
        else:
            value = value[:idx] + "_" + value[idx:end] + "_" + value[end:]
    return value


def to_snake(name: str) -> str:
    """operator-sdk's paramconv.ToSnake: ``hsmPath`` -> ``hsm_path``, ``egressIPs`` -> ``egress_ips``,
    ``ThisIs`` -> ``_this_is`` (a leading capital gets a leading underscore)."""
    s = _NUMBER_SEQUENCE.sub(r"\1 \2 \3", name).strip(" ")
    if not s:
        return s
    prefix = "_" if "A" <= s[0] <= "Z" else ""
    if s.upper() != s:
        s = _preprocess_word_mapping(s)
    bits: list[str] = []
    current = ""
    i_real = -1
    for i, ch in enumerate(s):
        i_real += 1
        case_changes = False
        if i + 1 < len(s):
            nxt = s[i + 1]
            case_changes = ("A" <= ch <= "Z" and "a" <= nxt <= "z") or ("a" <= ch <= "z" and "A" <= nxt <= "Z")
        if i_real > 0 and current and current[-1] != "_" and case_changes:
            if "A" <= ch <= "Z":
                bits.append(current.lower())
                current = ch
                i_real = 0
            else:
                bits.append((current + ch).lower())
                current = ""
                i_real = -1
        elif ch in " _-":
            bits.append(current.lower())
            current = ""
            i_real = -1
        else:
            current += ch
    bits.append(current.lower())
    joined = "_".join(bits)
    return joined if bits[0] in _WORD_MAPPING else prefix + joined


def to_snake_keys(value: Any) -> Any:
    """Snake-case every mapping key, recursively (lists included), values untouched."""
    if isinstance(value, Mapping):
        return {to_snake(str(k)): to_snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_snake_keys(v) for v in value]
    return value


def mark_unsafe(value: Any) -> Any:
    """Wrap every string that could hold a Jinja template as ``{"__ansible_unsafe": s}``."""
    if isinstance(value, str):
        return {UNSAFE_KEY: value} if "{" in value else value
    if isinstance(value, Mapping):
        return {k: mark_unsafe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mark_unsafe(v) for v in value]
    return value


def _spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return dict(spec) if isinstance(spec, Mapping) else {}


def object_extravars(watch: Watch, obj: Mapping[str, Any], *, finalizer_run: bool = False) -> dict[str, Any]:
    """The extravars operator-sdk passes for one object."""
    spec = _spec(obj)
    params: dict[str, Any] = to_snake_keys(spec) if watch.snake_case_parameters else dict(spec)
    if watch.mark_unsafe:
        params = {k: mark_unsafe(v) for k, v in params.items()}
    meta = obj.get("metadata") or {}
    params["ansible_operator_meta"] = {"namespace": meta.get("namespace", ""), "name": meta.get("name", "")}
    key = watch.object_key
    params[key] = mark_unsafe(dict(obj)) if watch.mark_unsafe else dict(obj)
    params[f"{key}_spec"] = mark_unsafe(spec) if watch.mark_unsafe else spec
    params.update(watch.vars)
    if finalizer_run and watch.finalizer is not None:
        params.update(watch.finalizer.vars)
    return params


def batch_extravars(
    watch: Watch, objects: Sequence[Mapping[str, Any]], *, finalizer_run: bool = False
) -> dict[str, Any]:
    """A batch run: ``hsm_batch`` holds every object; a batch of one also gets the single-object
    variables, so a role written for operator-sdk still finds what it expects."""
    if len(objects) == 1:
        params = object_extravars(watch, objects[0], finalizer_run=finalizer_run)
    else:
        params = dict(watch.vars)
        if finalizer_run and watch.finalizer is not None:
            params.update(watch.finalizer.vars)
    batch = [mark_unsafe(dict(o)) if watch.mark_unsafe else dict(o) for o in objects]
    params[BATCH_VAR] = batch
    return params


def dump_extravars(params: Mapping[str, Any]) -> str:
    """The ``env/extravars`` file (JSON, which Ansible reads fastest; unsafe markers included)."""
    return json.dumps(params, separators=(",", ":"), default=str)
