#!/usr/bin/env bash
# Install and start the local PostgreSQL and Redis the multi-instance tests use, from Debian's
# packages, on 127.0.0.1 only. Prints the two GAUD_TEST_* variables to export.
set -euo pipefail

# Daemons get none of our descriptors, or a caller's `$(...)` would wait for them to exit.
# Only the exports go to stdout (callers `eval` it): package scripts and servers print to stdout too
# (e.g. systemd's "Removed ..." during apt-get install), so everything else goes to stderr.
exec 3>&1 1>&2

if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
fi

# Redis on a port of its own, no persistence.
if ! redis-cli -p 6390 ping >/dev/null 2>&1; then
  redis-server --port 6390 --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
    </dev/null >/dev/null 2>&1 3>&-
fi
for _ in $(seq 100); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done

# PostgreSQL: the packaged cluster, a superuser and a database for the tests.
version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h | grep -q online; then
  pg_ctlcluster "$version" main start </dev/null >/dev/null 2>&1 3>&-
fi
for _ in $(seq 100); do pg_isready -h 127.0.0.1 -q && break; sleep 0.1; done
su postgres -c "psql -qtc \"SELECT 1 FROM pg_roles WHERE rolname='gaud'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE gaud LOGIN SUPERUSER PASSWORD 'gaud'\""
su postgres -c "psql -qtc \"SELECT 1 FROM pg_database WHERE datname='gaud_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O gaud gaud_test"

echo "export GAUD_TEST_POSTGRES_URL=postgresql://gaud:gaud@127.0.0.1:5432/gaud_test" >&3
echo "export GAUD_TEST_REDIS_URL=redis://127.0.0.1:6390/0" >&3
