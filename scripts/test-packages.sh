#!/usr/bin/env bash
# The system packages the test suite needs, installed from Debian's packages where missing:
#   docker-compose  validates docker-compose.yml offline (no Docker engine needed)
#   postgresql      MLflow's backend store in the loopback cluster test (initdb, pg_ctl)
# Run as root or with sudo; a no-op (well under a second) when both are present.
# Usage: bash scripts/test-packages.sh        (the README's second command runs it first)
set -euo pipefail
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "error: the tests need ${missing[*]}; this machine has no apt-get: install them with" \
         "its package manager (PostgreSQL's initdb and pg_ctl must be on /usr/lib/postgresql/*/bin" \
         "or PATH)" >&2
    exit 1
fi
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
echo "installing ${missing[*]} from Debian's packages (needed by the tests)" >&2
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
