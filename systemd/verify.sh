#!/usr/bin/env bash
# Checks the unit file with systemd-analyze: syntax (verify) and hardening score (security, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# verify wants ExecStart's binary to exist: point it at a stand-in with the same name.
mkdir -p "$work/bin"
printf '#!/bin/sh\nexit 0\n' > "$work/bin/preflix-webhookd"
chmod +x "$work/bin/preflix-webhookd"
sed "s#/usr/local/bin/preflix-webhookd#$work/bin/preflix-webhookd#" systemd/preflix-webhookd.service > "$work/preflix-webhookd.service"
systemd-analyze verify "$work/preflix-webhookd.service"
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  score=$(systemd-analyze security --offline=true "$work/preflix-webhookd.service" 2>/dev/null | tail -n 1)
  echo "systemd-analyze security: $score"
  exposure=$(printf '%s\n' "$score" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
  awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || { echo "exposure $exposure is above 2.0"; exit 1; }
fi
echo "unit file OK"
