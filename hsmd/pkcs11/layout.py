"""The on-token layout (DESIGN.md contract 2) and the pure rules for reading it.

A secret ``<path>`` is a set of CKO_DATA objects with CKA_APPLICATION "hsm-secrets-operator":
one per key, labelled ``<path>/<key>``, plus a metadata object ``<path>/_metadata`` holding the
Go operator's metadata JSON. hsmd adds one field to that JSON, ``hsmd``, describing a
*generation*: its number, the sha256 of every key's value, and the secret's checksum. Several
generations of a secret can exist on the token at once while a write is in flight (or after a
crash); the reader rule below picks the one that is complete, so a replace is all-or-nothing:

* among the metadata objects of a path that carry generation info, the highest generation whose
  every key has an object with that label and exactly that value digest wins; a winning
  generation marked ``deleted`` (a tombstone, used to delete a Go-layout secret atomically) means
  the secret does not exist;
* when metadata objects with generation info exist but none is complete, the secret does not
  exist (a first write that did not finish);
* with no generation info at all the secret is in the Go operator's layout: every object
  ``<path>/<key>`` is a key, the Go metadata (if any) its metadata.

Key objects of the same label that the winning generation does not name, and metadata objects of
other generations, are leftovers: never visible, removed by the next write of that path.

Labels split with ``rsplit('/', 1)``: keys never contain '/', so ``db/x/k`` belongs to ``db/x``
and never to ``db``. Everything here is pure so it is unit-testable without a token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hsmd.model import METADATA_KEY, SecretMetadata, validate_path

GENERATION_FIELD = "hsmd"
LAYOUT_VERSION = 1


def label_for(path: str, key: str) -> str:
    return f"{path}/{key}"


def split_label(label: str) -> tuple[str, str] | None:
    """``(path, key)`` of an object label, None when the label cannot be one of ours."""
    if "/" not in label:
        return None
    path, key = label.rsplit("/", 1)
    if not key:
        return None
    try:
        validate_path(path)
    except Exception:
        return None
    return path, key


@dataclass(frozen=True)
class Generation:
    """hsmd's extra metadata: which values make up generation ``number`` of a secret."""

    number: int
    keys: Mapping[str, str]  # key -> hex sha256 of its value (hsmd.model.value_digest)
    checksum: str = ""
    deleted: bool = False

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "v": LAYOUT_VERSION,
            "generation": self.number,
            "keys": dict(sorted(self.keys.items())),
            "checksum": self.checksum,
        }
        if self.deleted:
            out["deleted"] = True
        return out

    @classmethod
    def from_json(cls, raw: object) -> Generation | None:
        if not isinstance(raw, Mapping):
            return None
        number = raw.get("generation")
        keys = raw.get("keys")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1 or not isinstance(keys, Mapping):
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            return None
        checksum = raw.get("checksum")
        return cls(
            number=number,
            keys=dict(keys),
            checksum=checksum if isinstance(checksum, str) else "",
            deleted=bool(raw.get("deleted", False)),
        )


@dataclass(frozen=True)
class MetadataDoc:
    """A decoded ``<path>/_metadata`` object."""

    metadata: SecretMetadata
    generation: Generation | None  # None: written by the Go operator (or by hand)


def encode_metadata(metadata: SecretMetadata, generation: Generation) -> bytes:
    doc = metadata.to_json_dict()
    doc[GENERATION_FIELD] = generation.to_json()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_metadata(raw: bytes) -> MetadataDoc | None:
    """None when the object is not a JSON object (it is then ignored, like a foreign object)."""
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    return MetadataDoc(
        metadata=SecretMetadata.from_json_dict(doc),
        generation=Generation.from_json(doc.get(GENERATION_FIELD)),
    )


@dataclass(frozen=True)
class ObjectRecord:
    """One on-token object of a secret path as the reader sees it."""

    handle: int
    path: str
    key: str  # METADATA_KEY for metadata objects
    digest: str | None = None  # hex sha256 of the value, when known
    doc: MetadataDoc | None = None  # decoded metadata (metadata objects only)

    @property
    def is_metadata(self) -> bool:
        return self.key == METADATA_KEY


@dataclass(frozen=True)
class Version:
    """The visible version of a secret: which object holds each key."""

    path: str
    metadata: SecretMetadata
    objects: Mapping[str, int]  # key -> object handle
    generation: Generation | None  # None: Go operator layout
    metadata_handle: int | None = None
    leftovers: tuple[int, ...] = field(default=())  # objects of the path that are not part of it


def max_generation(records: Iterable[ObjectRecord]) -> int:
    numbers = [r.doc.generation.number for r in records if r.doc is not None and r.doc.generation is not None]
    return max(numbers, default=0)


def choose_version(path: str, records: Iterable[ObjectRecord]) -> Version | None:
    """The visible version of ``path`` among its objects, None when the secret does not exist.

    Key objects of generation-tracked secrets must carry a digest; Go-layout objects need none.
    """
    recs = [r for r in records if r.path == path]
    metas = [r for r in recs if r.is_metadata]
    keys = [r for r in recs if not r.is_metadata]
    tracked = sorted(
        (r for r in metas if r.doc is not None and r.doc.generation is not None),
        key=lambda r: (r.doc.generation.number if r.doc and r.doc.generation else 0, r.handle),
        reverse=True,
    )
    if tracked:
        for meta in tracked:
            assert meta.doc is not None and meta.doc.generation is not None
            gen = meta.doc.generation
            if gen.deleted:
                return None
            chosen: dict[str, int] = {}
            for key, digest in gen.keys.items():
                match = [r.handle for r in keys if r.key == key and r.digest == digest]
                if not match:
                    break
                chosen[key] = min(match)
            else:
                if not chosen:
                    continue
                used = set(chosen.values()) | {meta.handle}
                return Version(
                    path=path,
                    metadata=meta.doc.metadata,
                    objects=chosen,
                    generation=gen,
                    metadata_handle=meta.handle,
                    leftovers=tuple(sorted(r.handle for r in recs if r.handle not in used)),
                )
        return None
    # Go operator layout: every key object is the secret; duplicates (which the Go operator never
    # writes on purpose) resolve to the lowest handle so the answer is at least stable.
    if not keys:
        return None
    chosen = {}
    for rec in sorted(keys, key=lambda r: r.handle):
        chosen.setdefault(rec.key, rec.handle)
    legacy_meta = next((m for m in sorted(metas, key=lambda r: r.handle) if m.doc is not None), None)
    used = set(chosen.values()) | ({legacy_meta.handle} if legacy_meta else set())
    return Version(
        path=path,
        metadata=legacy_meta.doc.metadata if legacy_meta and legacy_meta.doc else SecretMetadata(),
        objects=chosen,
        generation=None,
        metadata_handle=legacy_meta.handle if legacy_meta else None,
        leftovers=tuple(sorted(r.handle for r in recs if r.handle not in used)),
    )
