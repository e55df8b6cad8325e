#!/usr/bin/env bash
# The seed's command name: `seaf-backup-cmd.sh status`, `seaf-backup-cmd.sh sync [--force] <library id>`.
# Runs seaf-backup-cmd from the agent's virtualenv (SEAFBACKUP_VENV, default /opt/seafbackup/venv).
set -euo pipefail
venv="${SEAFBACKUP_VENV:-/opt/seafbackup/venv}"
if [ -x "$venv/bin/seaf-backup-cmd" ]; then
    exec "$venv/bin/seaf-backup-cmd" "$@"
fi
exec seaf-backup-cmd "$@"
