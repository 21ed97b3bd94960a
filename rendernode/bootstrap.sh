#!/usr/bin/env bash
# One-step setup for a fresh Debian machine, then run the node or the tests.
#   bash rendernode/bootstrap.sh serve [rendernode serve flags...]
#   bash rendernode/bootstrap.sh test  [pytest args...]
# Idempotent: system packages are installed only when missing, the virtualenv
# only when setup.cfg changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-}
case "$mode" in
  serve|test) shift ;;
  *) echo "usage: bash rendernode/bootstrap.sh serve|test [args...]" >&2; exit 2 ;;
esac

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ -z "${BLENDER_PATH:-}" ] && ! command -v blender >/dev/null 2>&1; then missing+=(blender); fi
if [ "$mode" = test ] && [ -z "${CHROMIUM_PATH:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]} with apt-get" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

extras=""
[ "$mode" = test ] && extras="[test]"
stamp=".venv/.rendernode-installed"
digest="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
installed="$(cat "$stamp" 2>/dev/null || true)"
# A test install also serves; a serve-only install needs the test extras added.
if [ ! -x .venv/bin/python ] || { [ "$installed" != "$digest[test]" ] && [ "$installed" != "$digest$extras" ]; }; then
  echo "bootstrap: installing rendernode$extras into .venv" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"
  echo "$digest$extras" > "$stamp"
fi

if [ "$mode" = serve ]; then
  exec .venv/bin/rendernode serve "$@"
fi
exec .venv/bin/python -m pytest "$@"
