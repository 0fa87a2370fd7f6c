#!/usr/bin/env bash
# make setup: the Debian packages the project needs, then .venv with runtime + dev tools.
# Idempotent and quiet when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEB_PACKAGES=(softhsm2 opensc pcscd libccid)

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v pcscd >/dev/null 2>&1 || [ -x /usr/sbin/pcscd ] || missing+=(pcscd)
[ -d /usr/lib/pcsc/drivers ] || missing+=(libccid)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: run this once, then 'make setup' again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${DEB_PACKAGES[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${DEB_PACKAGES[@]}" >/dev/null
fi

stamp="$VENV/.hsmd-setup"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
