#!/usr/bin/env bash
# Install the system packages interlock's server tests need (idempotent):
#   redis-server redis-tools postgresql openssl faketime, and gcc + libc6-dev (the optional native accelerator
#   of memory:// is built at install time; without a compiler interlock falls back to pure Python)
#   [+ any extra package names given as arguments]
# and make sure no system-wide Redis or PostgreSQL service is left running: the tests start
# their own servers on free loopback ports (interlock.testing.servers) and stop only those.
#
# Usage: .ci/install-system.sh [extra-package ...]
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(redis-server redis-tools postgresql openssl faketime gcc libc6-dev "$@")

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-system: installing ${missing[*]}"
    # Keep maintainer scripts from starting services while installing (Debian's policy-rc.d
    # protocol: exit 101 = "action forbidden"); put back whatever was there before.
    policy=/usr/sbin/policy-rc.d
    backup=""
    if [ -e "$policy" ]; then
        backup="$(mktemp)"
        as_root cp -p "$policy" "$backup"
    fi
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    restore_policy() {
        if [ -n "$backup" ]; then as_root cp -p "$backup" "$policy"; rm -f "$backup"; else as_root rm -f "$policy"; fi
    }
    trap restore_policy EXIT
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    restore_policy
    trap - EXIT
else
    echo "install-system: ${packages[*]} already installed"
fi

# Stop (and under systemd disable) the distribution's own services, through their own tools
# (pid files / units), never by process name.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in redis-server.service redis.service postgresql.service; do
        if systemctl list-unit-files "$unit" >/dev/null 2>&1; then
            as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
        fi
    done
else
    if [ -x /etc/init.d/redis-server ] && as_root /etc/init.d/redis-server status >/dev/null 2>&1; then
        as_root /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    fi
fi
if command -v pg_lsclusters >/dev/null 2>&1; then
    # columns: version cluster port status owner datadir logfile
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
        if [ "$status" != "down" ]; then
            as_root pg_ctlcluster "$ver" "$name" stop -m fast || true
        fi
    done
fi

# Report what the tests will use.
redis-server --version | head -n1
openssl version
for bindir in /usr/lib/postgresql/*/bin; do
    [ -x "$bindir/postgres" ] && "$bindir/postgres" --version
done
exit 0
