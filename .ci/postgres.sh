#!/usr/bin/env bash
# Start a local PostgreSQL for the test suite and print its SQLAlchemy URL on stdout.
#
#   export VEIL_TEST_POSTGRES_URL=$(bash .ci/postgres.sh)
#
# Run as root on Debian 12 (CI containers). Installs postgresql if needed, runs the
# cluster on 127.0.0.1 only, and creates a login role + database for the tests.
# Idempotent: running it again reuses what is there. Everything but the URL goes
# to stderr. The tests create (and drop) one schema per test inside this database.
set -euo pipefail

ROLE=${VEIL_PG_ROLE:-veil_test}
PASSWORD=${VEIL_PG_PASSWORD:-veil_test}
DATABASE=${VEIL_PG_DATABASE:-veil_test}
PORT=${VEIL_PG_PORT:-5432}

log() { echo "postgres.sh: $*" >&2; }
as_postgres() { runuser -u postgres -- "$@"; }

if [ "$(id -u)" -ne 0 ]; then
    log "run me as root (I install and start PostgreSQL)"
    exit 1
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters --no-header | awk '{print $1, $2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION/main"
    pg_createcluster "$VERSION" main >&2
fi

# Loopback only, on the port we were asked for. (pg_conftool would write the address
# unquoted, which PostgreSQL rejects, so that line is edited directly.)
CONF=/etc/postgresql/$VERSION/main/postgresql.conf
changed=0
if ! grep -qx "listen_addresses = '127.0.0.1'" "$CONF"; then
    sed -i -E "/^[#[:space:]]*listen_addresses[[:space:]]*=/d" "$CONF"
    echo "listen_addresses = '127.0.0.1'" >> "$CONF"
    changed=1
fi
if [ "$(pg_conftool "$VERSION" main show port | awk '{print $3}')" != "$PORT" ]; then
    pg_conftool "$VERSION" main set port "$PORT"
    changed=1
fi

install -d -o postgres -g postgres -m 2775 /var/run/postgresql
status=$(pg_lsclusters --no-header | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}')
if [ "$status" != "online" ]; then
    log "starting cluster $VERSION/main on 127.0.0.1:$PORT"
    pg_ctlcluster "$VERSION" main start >&2
elif [ "$changed" = 1 ]; then
    log "restarting cluster $VERSION/main for the new settings"
    pg_ctlcluster "$VERSION" main restart >&2
fi

for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { log "PostgreSQL did not come up"; exit 1; }

as_postgres psql -q -X -v ON_ERROR_STOP=1 -p "$PORT" \
    -v role="$ROLE" -v password="$PASSWORD" >&2 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SQL

if ! as_postgres psql -X -tA -p "$PORT" -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1; then
    log "creating database $DATABASE"
    as_postgres createdb -p "$PORT" -O "$ROLE" "$DATABASE"
fi

echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
