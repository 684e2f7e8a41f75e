# shellcheck shell=bash
# PostgreSQL for the test suite: install it when missing, start a server, and
# export EDGEQI_TEST_DATABASE_URL so the Store conformance suite, the EXPLAIN
# checks and the database-fault tests run against a real PostgreSQL.
#
# Usage: `source scripts/lib/postgres.sh` (scripts/test does) installs,
# starts and exports at once; it fails (returns 1) when PostgreSQL cannot be
# set up, unless EDGEQI_PG_SKIP=1. The functions can also be used directly:
#     EDGEQI_PG_NO_AUTOSTART=1 source scripts/lib/postgres.sh
#     edgeqi_pg_start            # sets EDGEQI_TEST_DATABASE_URL (or returns 1)
#     edgeqi_pg_stop             # stops only a temp cluster edgeqi_pg_start made
#
# - A URL already in EDGEQI_TEST_DATABASE_URL is used as is.
# - As root on Debian, `apt-get install postgresql` when no server binaries
#   exist; timescaledb is installed too when apt has a candidate for it.
# - The Debian cluster (pg_lsclusters) is started with pg_ctlcluster; when
#   there is none, initdb makes a throw-away cluster in a temp dir.
# - A role `edgeqi` (password `edgeqi`, CREATEDB: each test makes its own
#   database) and a database `edgeqi_test` are created if missing.
# Set EDGEQI_PG_SKIP=1 to run without PostgreSQL (SQLite only).

_edgeqi_pg_log() { echo "postgres.sh: $*" >&2; }

# The newest installed server's bin directory, if any.
_edgeqi_pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

# Runs a command as the postgres OS user when we are root (the server refuses
# to run as root), else as ourselves.
_edgeqi_pg_as() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_edgeqi_pg_install() {
    if [ -n "$(_edgeqi_pg_bindir)" ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        _edgeqi_pg_log "no PostgreSQL server installed and cannot apt-get install it (not root or not Debian)"
        return 1
    fi
    _edgeqi_pg_log "installing postgresql with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
}

# TimescaleDB only when the distribution (or a configured repository) has it.
_edgeqi_pg_install_timescaledb() {
    local major=$1 pkg
    [ "$(id -u)" = 0 ] && command -v apt-cache >/dev/null 2>&1 || return 0
    for pkg in "timescaledb-2-postgresql-$major" "postgresql-$major-timescaledb"; do
        if apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            if ! dpkg -s "$pkg" >/dev/null 2>&1; then
                _edgeqi_pg_log "installing $pkg"
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null ||
                    _edgeqi_pg_log "could not install $pkg; going on without TimescaleDB"
            fi
            return 0
        fi
    done
    _edgeqi_pg_log "no TimescaleDB package for PostgreSQL $major; native partitions will be used"
}

# Runs SQL as the superuser. Args: host-or-socket-dir port sql
_edgeqi_pg_psql() {
    _edgeqi_pg_as psql -X -q -v ON_ERROR_STOP=1 -h "$1" -p "$2" -d postgres -U "${EDGEQI_PG_SUPERUSER:-postgres}" -c "$3"
}

_edgeqi_pg_bootstrap_role() {
    local host=$1 port=$2
    _edgeqi_pg_psql "$host" "$port" "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edgeqi') THEN
            CREATE ROLE edgeqi LOGIN CREATEDB PASSWORD 'edgeqi';
        ELSE
            ALTER ROLE edgeqi LOGIN CREATEDB PASSWORD 'edgeqi';
        END IF; END \$\$;" || return 1
    if ! _edgeqi_pg_as psql -X -tA -h "$host" -p "$port" -d postgres -U "${EDGEQI_PG_SUPERUSER:-postgres}" \
        -c "SELECT 1 FROM pg_database WHERE datname = 'edgeqi_test'" | grep -q 1; then
        _edgeqi_pg_psql "$host" "$port" "CREATE DATABASE edgeqi_test OWNER edgeqi" || return 1
    fi
}

_edgeqi_pg_start_debian_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local line ver name port status
    line=$(pg_lsclusters --no-header 2>/dev/null | sort -V | tail -n 1)
    [ -n "$line" ] || return 1
    read -r ver name port status _ <<<"$line"
    if [ "$status" != online ]; then
        _edgeqi_pg_log "starting Debian cluster $ver/$name on port $port"
        pg_ctlcluster "$ver" "$name" start || return 1
    fi
    _edgeqi_pg_bootstrap_role /var/run/postgresql "$port" || return 1
    export EDGEQI_TEST_DATABASE_URL="postgres://edgeqi:edgeqi@127.0.0.1:$port/edgeqi_test"
}

_edgeqi_pg_start_temp_cluster() {
    local bindir port dir
    bindir=$(_edgeqi_pg_bindir)
    [ -n "$bindir" ] || return 1
    dir=$(mktemp -d /tmp/edgeqi-pg.XXXXXX) || return 1
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=${EDGEQI_PG_PORT:-55432}
    _edgeqi_pg_log "initdb into $dir (port $port)"
    _edgeqi_pg_as "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null || return 1
    _edgeqi_pg_as "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null || {
        cat "$dir/server.log" >&2
        return 1
    }
    EDGEQI_PG_TEMP_DIR=$dir
    EDGEQI_PG_TEMP_BINDIR=$bindir
    export EDGEQI_PG_TEMP_DIR EDGEQI_PG_TEMP_BINDIR
    _edgeqi_pg_bootstrap_role "$dir" "$port" || return 1
    export EDGEQI_TEST_DATABASE_URL="postgres://edgeqi:edgeqi@127.0.0.1:$port/edgeqi_test"
}

edgeqi_pg_start() {
    if [ "${EDGEQI_PG_SKIP:-0}" = 1 ]; then
        _edgeqi_pg_log "EDGEQI_PG_SKIP=1: PostgreSQL tests will be skipped"
        return 0
    fi
    if [ -n "${EDGEQI_TEST_DATABASE_URL:-}" ]; then
        return 0
    fi
    _edgeqi_pg_install || return 1
    local bindir major
    bindir=$(_edgeqi_pg_bindir)
    major=$(basename "$(dirname "$bindir")")
    case $major in [0-9]*) _edgeqi_pg_install_timescaledb "$major" ;; esac
    if ! _edgeqi_pg_start_debian_cluster; then
        _edgeqi_pg_start_temp_cluster || return 1
    fi
    _edgeqi_pg_log "EDGEQI_TEST_DATABASE_URL=${EDGEQI_TEST_DATABASE_URL/:edgeqi@/:***@}"
}

edgeqi_pg_stop() {
    if [ -n "${EDGEQI_PG_TEMP_DIR:-}" ]; then
        _edgeqi_pg_as "$EDGEQI_PG_TEMP_BINDIR/pg_ctl" -D "$EDGEQI_PG_TEMP_DIR/data" -m fast -w stop >/dev/null 2>&1
        rm -rf "$EDGEQI_PG_TEMP_DIR"
        unset EDGEQI_PG_TEMP_DIR EDGEQI_PG_TEMP_BINDIR EDGEQI_TEST_DATABASE_URL
    fi
}

if [ "${EDGEQI_PG_NO_AUTOSTART:-0}" != 1 ]; then
    edgeqi_pg_start || {
        _edgeqi_pg_log "cannot set up PostgreSQL; set EDGEQI_PG_SKIP=1 to test SQLite only"
        return 1 2>/dev/null || exit 1
    }
fi
