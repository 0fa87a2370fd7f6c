"""``hsmctl``: list, get, create, edit, delete, import, export, devices, health, rotate-pin.

Global options (or their environment variables): --server ($HSMCTL_SERVER), --token-file
($HSMCTL_TOKEN_FILE; or $HSMCTL_TOKEN), --service-account NS/NAME ($HSMCTL_SERVICE_ACCOUNT) with
--kubeconfig and --audience to mint a token, --cacert ($HSMCTL_CACERT), -o text|json|yaml.
Exit codes: 0 ok, 1 error, 2 usage/invalid input, 3 authentication/authorization, 4 not found,
5 conflict, 6 broker/agents unavailable, 7 partial success (bulk, PIN rotation).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hsmd.hsmctl.client import (
    DEFAULT_AUDIENCE,
    DEFAULT_SERVER,
    EXIT_CONFLICT,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    BrokerClient,
    HsmctlError,
    token_from_sources,
)

EDIT_HEADER = (
    "# Edit the secret below; lines starting with '#' are ignored. Save and exit to apply;\n"
    "# an unchanged file or an empty one cancels. Binary values appear as !!binary (base64).\n"
)


# --- output ------------------------------------------------------------------------------------


def emit(doc: Any, output: str, text: str | None = None) -> None:
    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=False))
    elif output == "yaml":
        print(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), end="")
    elif text is not None:
        print(text)


def decoded(value_b64: str) -> bytes:
    return base64.b64decode(value_b64)


def show_value(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<binary, {len(raw)} bytes; use --key KEY to write it raw>"
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        return f"<binary, {len(raw)} bytes; use --key KEY to write it raw>"
    return text


def agents_summary(doc: dict[str, Any]) -> str:
    quorum = doc.get("quorum") or {}
    text = f"{quorum.get('acknowledged', '?')}/{quorum.get('agents', '?')} device(s)"
    if doc.get("repairQueued"):
        text += f"; repair queued for {', '.join(doc['repairQueued'])}"
    return text


# --- values from the command line ----------------------------------------------------------------


def collect_data(literals: list[str], files: list[str], env_files: list[str]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}

    def put(key: str, value: bytes, source: str) -> None:
        if not key:
            raise HsmctlError(f"{source}: empty key", EXIT_USAGE)
        if key in data:
            raise HsmctlError(f"key {key!r} given more than once", EXIT_USAGE)
        data[key] = value

    for item in literals:
        key, sep, value = item.partition("=")
        if not sep:
            raise HsmctlError("--from-literal must be KEY=VALUE, got a value without '='", EXIT_USAGE)
        put(key, value.encode("utf-8"), "--from-literal")
    for item in files:
        key, sep, path = item.partition("=")
        if not sep:
            key, path = os.path.basename(item), item
        try:
            put(key, Path(path).read_bytes(), f"--from-file {path}")
        except OSError as exc:
            raise HsmctlError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    for path in env_files:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise HsmctlError(
                f"cannot read env file {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE
            ) from None
        for lineno, line in enumerate(lines, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("export "):
                stripped = stripped[len("export ") :].lstrip()
            key, sep, value = stripped.partition("=")
            if not sep:
                raise HsmctlError(f"{path} line {lineno}: expected KEY=VALUE", EXIT_USAGE)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            put(key.strip(), value.encode("utf-8"), f"{path} line {lineno}")
    return data


def collect_metadata(args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if args.description is not None:
        meta["description"] = args.description
    if args.data_type is not None:
        meta["dataType"] = args.data_type
    if args.label:
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise HsmctlError(f"--label must be KEY=VALUE, got {item!r}", EXIT_USAGE)
            labels[key] = value
        meta["labels"] = labels
    return meta


def b64map(data: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}


def read_document(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HsmctlError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE) from None
    try:
        return yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise HsmctlError(f"{path} is neither JSON nor YAML: {exc}", EXIT_USAGE) from None


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# --- commands ------------------------------------------------------------------------------------


def cmd_list(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = client.list_secrets(args.prefix or "")
    emit(doc, args.output, "\n".join(doc["paths"]) if doc["paths"] else "No secrets found.")
    return EXIT_OK


def cmd_get(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = client.get(args.path)
    if args.key:
        if args.key not in doc["data"]:
            raise HsmctlError(f"secret {args.path!r} has no key {args.key!r} (keys: {', '.join(doc['data'])})", 4)
        sys.stdout.buffer.write(decoded(doc["data"][args.key]))
        sys.stdout.buffer.flush()
        return EXIT_OK
    meta = doc.get("metadata") or {}
    lines = [f"path:      {doc['path']}", f"checksum:  {doc['checksum']}"]
    for label, name in (("written:   ", "createdAt"), ("type:      ", "dataType"), ("about:     ", "description")):
        if meta.get(name):
            lines.append(f"{label}{meta[name]}")
    if meta.get("labels"):
        lines.append("labels:    " + ", ".join(f"{k}={v}" for k, v in sorted(meta["labels"].items())))
    lines.append("data:")
    lines += [f"  {k}: {show_value(decoded(v))}" for k, v in doc["data"].items()]
    if doc.get("disagreement"):
        lines.append(f"warning: devices disagree; resolved by {doc['disagreement']['resolvedBy']}")
    emit(doc, args.output, "\n".join(lines))
    return EXIT_OK


def cmd_create(client: BrokerClient, args: argparse.Namespace) -> int:
    data = collect_data(args.from_literal or [], args.from_file or [], args.from_env_file or [])
    if not data:
        raise HsmctlError("no values: give --from-literal, --from-file or --from-env-file", EXIT_USAGE)
    meta = collect_metadata(args)
    if args.overwrite:
        doc = client.replace(args.path, b64map(data), meta)
        verb = "created" if doc.get("created") else ("updated" if doc.get("changed") else "unchanged")
    else:
        doc = client.create(args.path, b64map(data), meta)
        verb = "created"
    emit(doc, args.output, f"secret {args.path} {verb} ({doc.get('checksum')}) on {agents_summary(doc)}")
    return EXIT_OK


def edit_view(doc: dict[str, Any]) -> str:
    data: dict[str, Any] = {}
    for key, value in doc["data"].items():
        raw = decoded(value)
        try:
            text = raw.decode("utf-8")
            data[key] = text if show_value(raw) == text else raw
        except UnicodeDecodeError:
            data[key] = raw
    meta = doc.get("metadata") or {}
    view = {
        "path": doc["path"],
        "data": data,
        "metadata": {
            k: meta.get(k)
            for k in ("description", "labels", "format", "dataType", "source")
            if meta.get(k) not in (None, "", {})
        },
    }
    return EDIT_HEADER + yaml.safe_dump(view, sort_keys=False, default_flow_style=False, allow_unicode=True)


def parse_edit(text: str, path: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    try:
        view = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HsmctlError(f"the edited secret is not valid YAML: {exc}", EXIT_USAGE) from None
    if not isinstance(view, dict) or set(view) - {"path", "data", "metadata"}:
        raise HsmctlError("the edited document must have only 'path', 'data' and 'metadata'", EXIT_USAGE)
    if view.get("path", path) != path:
        raise HsmctlError("the path cannot be changed by editing; create the new path instead", EXIT_USAGE)
    raw_data = view.get("data")
    if not isinstance(raw_data, dict) or not raw_data:
        raise HsmctlError("'data' must map at least one key to a value", EXIT_USAGE)
    data: dict[str, bytes] = {}
    for key, value in raw_data.items():
        if isinstance(value, bytes):
            data[str(key)] = value
        elif isinstance(value, str | int | float | bool):
            data[str(key)] = (value if isinstance(value, str) else json.dumps(value)).encode("utf-8")
        else:
            raise HsmctlError(f"value of {key!r} must be text or !!binary", EXIT_USAGE)
    meta = view.get("metadata") or {}
    if not isinstance(meta, dict):
        raise HsmctlError("'metadata' must be a mapping", EXIT_USAGE)
    return data, meta


def cmd_edit(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = client.get(args.path)
    original = edit_view(doc)
    editor = os.environ.get("HSMCTL_EDITOR") or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="hsmctl-edit-") as tmp:
        os.chmod(tmp, 0o700)
        target = os.path.join(tmp, "secret.yaml")
        write_private(target, original)
        try:
            result = subprocess.run([*shlex.split(editor), target], check=False)  # the user's own editor
        except OSError as exc:
            raise HsmctlError(f"cannot run the editor {editor!r}: {exc.strerror}", EXIT_USAGE) from None
        if result.returncode != 0:
            raise HsmctlError(f"the editor exited with code {result.returncode}; nothing changed", EXIT_USAGE)
        edited = Path(target).read_text(encoding="utf-8")
    body = "\n".join(line for line in edited.splitlines() if not line.lstrip().startswith("#")).strip()
    if not body or edited == original:
        print("Edit cancelled, no changes made.", file=sys.stderr)
        return EXIT_OK
    data, meta = parse_edit(edited, args.path)
    try:
        result_doc = client.replace(args.path, b64map(data), meta, expected_checksum=doc["checksum"])
    except HsmctlError as exc:
        if exc.exit_code == EXIT_CONFLICT:
            raise HsmctlError(
                f"secret {args.path} was changed by someone else while you edited it; run edit again",
                EXIT_CONFLICT,
                code=exc.code,
                request_id=exc.request_id,
            ) from None
        raise
    emit(
        result_doc,
        args.output,
        f"secret {args.path} {'updated' if result_doc.get('changed') else 'unchanged'} ({result_doc.get('checksum')})"
        f" on {agents_summary(result_doc)}",
    )
    return EXIT_OK


def cmd_delete(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = client.delete(args.path, args.key)
    what = f"key {args.key} of secret {args.path}" if args.key else f"secret {args.path}"
    emit(doc, args.output, f"{what} deleted on {agents_summary(doc)}")
    return EXIT_OK


def cmd_import(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = read_document(args.file)
    secrets = doc.get("secrets") if isinstance(doc, dict) else doc
    if not isinstance(secrets, list):
        raise HsmctlError("the import file must hold a 'secrets' list (the format of hsmctl export)", EXIT_USAGE)
    response = client.import_(secrets, args.overwrite)
    body = response.body
    lines = []
    for item in body["results"]:
        if item["status"] == "failed":
            lines.append(f"{item['path']}: failed: {item['error']['message']} ({item['error']['code']})")
        else:
            lines.append(f"{item['path']}: {item['status']}")
    s = body["summary"]
    lines.append(f"{s['succeeded']} of {s['total']} imported, {s['failed']} failed")
    emit(body, args.output, "\n".join(lines))
    return EXIT_OK if response.status == 200 else EXIT_PARTIAL


def cmd_export(client: BrokerClient, args: argparse.Namespace) -> int:
    response = client.export(args.prefix or "")
    doc = {
        "secrets": [
            {k: v for k, v in s.items() if k in ("path", "data", "metadata", "checksum")}
            for s in response.body["secrets"]
        ]
    }
    text = yaml.safe_dump(doc, sort_keys=False) if args.output == "yaml" else json.dumps(doc, indent=2)
    if args.output_file:
        write_private(args.output_file, text if text.endswith("\n") else text + "\n")
        print(f"exported {len(doc['secrets'])} secret(s) to {args.output_file}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    for failure in response.body.get("errors") or []:
        print(f"hsmctl: {failure['path']}: {failure['error']['message']}", file=sys.stderr)
    return EXIT_OK if response.status == 200 else EXIT_PARTIAL


def cmd_devices(client: BrokerClient, args: argparse.Namespace) -> int:
    doc = client.info()
    rows = [("AGENT", "SERIAL", "LABEL", "MODEL", "FREE", "PIN", "STATUS")]
    for device in doc["devices"]:
        if not device["ok"]:
            rows.append((device["agent"], "-", "-", "-", "-", "-", f"error: {device['error']['code']}"))
            continue
        t = device["token"]
        flags = [name for name, on in t["pin"].items() if on] or ["ok"]
        free = "-" if t.get("freeMemory") is None else str(t["freeMemory"])
        rows.append((device["agent"], t["serial"], t["label"], t["model"], free, ",".join(flags), "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    repair = doc.get("repair") or {}
    if repair.get("pending"):
        table += f"\n{repair['pending']} repair(s) pending"
    emit(doc, args.output, table)
    return EXIT_OK


def cmd_health(client: BrokerClient, args: argparse.Namespace) -> int:
    response = client.health()
    doc = response.body or {}
    agents = doc.get("agents") or {}
    emit(
        doc,
        args.output,
        f"{doc.get('status', 'unknown')} ({agents.get('healthy', 0)}/{agents.get('total', 0)} agents healthy)",
    )
    return EXIT_OK if response.status == 200 else EXIT_UNAVAILABLE


def _pin(file: str | None, env: str | None, prompt: str, *, confirm: bool = False) -> str:
    from hsmd.errors import InvalidArgument
    from hsmd.service import read_secret_input

    if file or env:
        try:
            return read_secret_input(file=file, env=env, what=prompt)
        except InvalidArgument as exc:
            raise HsmctlError(exc.message, EXIT_USAGE) from None
    if not sys.stdin.isatty():
        raise HsmctlError(
            f"give the {prompt} with a file or an environment variable (stdin is not a terminal)", EXIT_USAGE
        )
    value = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass(f"{prompt} again: ") != value:
        raise HsmctlError("the two entries differ", EXIT_USAGE)
    if not value:
        raise HsmctlError(f"empty {prompt}", EXIT_USAGE)
    return value


def cmd_rotate_pin(client: BrokerClient, args: argparse.Namespace) -> int:
    old = _pin(args.old_pin_file, args.old_pin_env, "current PIN")
    new = _pin(args.new_pin_file, args.new_pin_env, "new PIN", confirm=True)
    response = client.rotate_pin(old, new, args.agent)
    body = response.body
    lines = [f"{a['agent']}: {'changed' if a['ok'] else 'failed: ' + a['error']['message']}" for a in body["agents"]]
    lines.append(f"PIN changed on {body['changed']} device(s), failed on {body['failed']}")
    if body["failed"]:
        lines.append("warning: the devices now have different PINs; fix the failed ones before restarting agents")
    emit(body, args.output, "\n".join(lines))
    return EXIT_OK if response.status == 200 else EXIT_PARTIAL


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsmctl",
        description="HSM-backed secrets through the hsmd broker.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage/invalid input, 3 authentication or "
        "authorization, 4 not found, 5 conflict, 6 unavailable, 7 partial success.",
    )
    p.add_argument(
        "--server",
        default=os.environ.get("HSMCTL_SERVER", DEFAULT_SERVER),
        help=f"broker URL (env HSMCTL_SERVER, default {DEFAULT_SERVER})",
    )
    p.add_argument("--token-file", help="file holding a ServiceAccount token (env HSMCTL_TOKEN_FILE or HSMCTL_TOKEN)")
    p.add_argument(
        "--service-account",
        metavar="NAMESPACE/NAME",
        help="mint a token for this ServiceAccount with TokenRequest (env HSMCTL_SERVICE_ACCOUNT)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig for --service-account (default $KUBECONFIG, ~/.kube/config)")
    p.add_argument(
        "--audience",
        default=os.environ.get("HSMCTL_AUDIENCE", DEFAULT_AUDIENCE),
        help="token audience for --service-account (default hsmd)",
    )
    p.add_argument("--cacert", default=os.environ.get("HSMCTL_CACERT"), help="CA bundle for an https broker")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    # -o also after the command, as with kubectl (`hsmctl get team/db -o yaml`)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("text", "json", "yaml"), default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", parents=[output], help="list secret paths")
    s.add_argument("--prefix", default="")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("get", parents=[output], help="show a secret")
    s.add_argument("path")
    s.add_argument("--key", help="write only this key's raw value to stdout")
    s.set_defaults(func=cmd_get)

    s = sub.add_parser("create", parents=[output], help="create a secret (--overwrite: create or replace)")
    s.add_argument("path")
    s.add_argument("--from-literal", action="append", metavar="KEY=VALUE")
    s.add_argument("--from-file", action="append", metavar="[KEY=]PATH")
    s.add_argument("--from-env-file", action="append", metavar="PATH")
    s.add_argument("--description")
    s.add_argument("--label", action="append", metavar="KEY=VALUE")
    s.add_argument("--data-type", help="plaintext, json, pem, binary, base64, x509-cert, private-key, docker-config")
    s.add_argument("--overwrite", action="store_true", help="replace the secret if it exists")
    s.set_defaults(func=cmd_create)

    s = sub.add_parser("edit", parents=[output], help="edit a secret in $EDITOR (decoded YAML view)")
    s.add_argument("path")
    s.set_defaults(func=cmd_edit)

    s = sub.add_parser("delete", parents=[output], help="delete a secret, or one key")
    s.add_argument("path")
    s.add_argument("--key")
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser(
        "import", parents=[output], help="write the secrets of an export file (JSON or YAML; '-' = stdin)"
    )
    s.add_argument("file")
    s.add_argument("--overwrite", action="store_true", help="replace secrets that exist")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("export", parents=[output], help="write every secret you may export (values base64)")
    s.add_argument("--prefix", default="")
    s.add_argument("--output-file", help="write here (mode 0600) instead of stdout")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("devices", parents=[output], help="the pool's devices, token info and PIN flags")
    s.set_defaults(func=cmd_devices)

    s = sub.add_parser("health", parents=[output], help="broker health (no token needed)")
    s.set_defaults(func=cmd_health, public=True)

    s = sub.add_parser(
        "rotate-pin", parents=[output], help="change the user PIN of the pool's devices (PINs from files/env)"
    )
    s.add_argument("--old-pin-file")
    s.add_argument("--old-pin-env", metavar="VAR")
    s.add_argument("--new-pin-file")
    s.add_argument("--new-pin-env", metavar="VAR")
    s.add_argument("--agent", action="append", metavar="HOST:PORT", help="only these agents (repeatable)")
    s.set_defaults(func=cmd_rotate_pin)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client: BrokerClient | None = None
    try:
        token = None
        if not getattr(args, "public", False):
            token = token_from_sources(
                token_file=args.token_file,
                service_account=args.service_account,
                kubeconfig=args.kubeconfig,
                audience=args.audience,
            )
        client = BrokerClient(args.server, token, cacert=args.cacert, timeout=args.timeout)
        code: int = args.func(client, args)
        return code
    except HsmctlError as exc:
        print(f"hsmctl: error: {exc}", file=sys.stderr)
        if args.output in ("json", "yaml") and isinstance(exc.body, dict):
            emit(exc.body, args.output)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    raise SystemExit(main())
