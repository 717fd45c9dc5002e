#!/usr/bin/env bash
# Start (or stop) a throwaway PostgreSQL for the cross-engine tests, on 127.0.0.1 only.
# Usage: source tests/postgres.sh start   -> exports HB_POSTGRES_URL
#        bash tests/postgres.sh stop
set -uo pipefail
hb_pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1; }
case "${1:-start}" in
  start)
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(hb_pg_version)" ]; then
      echo "installing PostgreSQL from Debian's packages"
      if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
      $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    fi
    v="$(hb_pg_version)"
    pg_lsclusters -h | grep -q "^$v main" || pg_createcluster "$v" main >/dev/null
    pg_ctlcluster "$v" main start 2>/dev/null || pg_ctlcluster "$v" main status >/dev/null
    port="$(pg_lsclusters -h | awk -v v="$v" '$1==v && $2=="main" {print $3}')"
    su postgres -c "psql -q -p $port -c \"DROP DATABASE IF EXISTS healthbench_test\"" >/dev/null
    su postgres -c "psql -q -p $port -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='healthbench') THEN CREATE ROLE healthbench LOGIN PASSWORD 'healthbench'; END IF; END \\\$\\\$\"" >/dev/null
    su postgres -c "psql -q -p $port -c \"CREATE DATABASE healthbench_test OWNER healthbench\"" >/dev/null
    export HB_POSTGRES_URL="postgres://healthbench:healthbench@127.0.0.1:$port/healthbench_test"
    echo "PostgreSQL $v running on 127.0.0.1:$port"
    ;;
  stop)
    v="$(hb_pg_version)"; [ -n "$v" ] && pg_ctlcluster "$v" main stop 2>/dev/null; echo "PostgreSQL stopped"
    ;;
esac
