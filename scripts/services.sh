#!/usr/bin/env bash
# Private Redis + Postgres for stampede (see README.md, "The two commands").
#
#   eval "$(bash scripts/services.sh)"     # make sure both run; prints export lines
#   bash scripts/services.sh stop           # stop both private instances
#   bash scripts/services.sh pg-stop        # stop only Postgres (returns when it is really down)
#   bash scripts/services.sh pg-start       # start only Postgres (returns when it accepts queries)
#   bash scripts/services.sh redis-stop | redis-start | status
#   eval "$(bash scripts/services.sh cluster-start)"   # a private Redis Cluster; exports REDIS_CLUSTER_URL
#   bash scripts/services.sh cluster-stop   # stop it and delete its data
#   STAMPEDE_CLUSTER_NODE=<port> bash scripts/services.sh cluster-node-start   # start one node again
#
# Only `export NAME=value` lines go to stdout; everything else goes to stderr.
#
# Environment:
#   REDIS_URL / DATABASE_URL   if set, that service is left alone and the URL is echoed back
#                              (pg-stop/pg-start/stop always act on the private instance)
#   STAMPEDE_DATA_DIR          data folder (default: <repo>/.data)
#   STAMPEDE_REDIS_PORT        private Redis port (default 6391)
#   STAMPEDE_REDIS_LOAD_WAIT_SECS  how long to wait for a restarted Redis to replay its AOF (default 600)
#   STAMPEDE_PG_DIR            private Postgres data dir (default: $STAMPEDE_DATA_DIR/pg)
#   STAMPEDE_PG_PORT           private Postgres port (default 5441)
#   STAMPEDE_PG_SOCKDIR        Unix socket dir (default: $STAMPEDE_DATA_DIR/pg-sock)
#   STAMPEDE_PG_BIN            Postgres bin dir (default: newest /usr/lib/postgresql/*/bin)
#   STAMPEDE_CLUSTER_PORT      first port of the private cluster (default 7301); its nodes take the
#                              next ports, and each node's cluster bus is its port + 10000
#   STAMPEDE_CLUSTER_PRIMARIES primaries (default 3)
#   STAMPEDE_CLUSTER_REPLICAS  replicas per primary (default 0; 1 for failover tests)
#   STAMPEDE_CLUSTER_NODE_TIMEOUT_MS  how long a primary may be silent before its replica takes
#                              over (default 2000)
#   STAMPEDE_CLUSTER_DIR       its data (default: $STAMPEDE_DATA_DIR/cluster-<first port>)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

log() { printf '[services] %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}

abspath() { # absolute path of $1 (need not exist yet)
    case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd -P)" "$1" ;;
    esac
}

DATA=$(abspath "${STAMPEDE_DATA_DIR:-$ROOT/.data}")
REDIS_PORT=${STAMPEDE_REDIS_PORT:-6391}
REDIS_LOAD_WAIT_SECS=${STAMPEDE_REDIS_LOAD_WAIT_SECS:-600}
REDIS_DIR=$DATA/redis
REDIS_PIDFILE=$REDIS_DIR/redis.pid
REDIS_LOG=$REDIS_DIR/redis.log
PG_DIR=$(abspath "${STAMPEDE_PG_DIR:-$DATA/pg}")
PG_PORT=${STAMPEDE_PG_PORT:-5441}
PG_SOCKDIR=$(abspath "${STAMPEDE_PG_SOCKDIR:-$DATA/pg-sock}")
PG_LOG=$PG_DIR.log # next to the cluster: initdb wants an empty dir
PG_DB=stampede
PG_USER=postgres
APT_LOG=$DATA/apt.log
# Below 32768 (Linux's ephemeral range starts there), bus ports included.
CLUSTER_PORT=${STAMPEDE_CLUSTER_PORT:-7301}
CLUSTER_PRIMARIES=${STAMPEDE_CLUSTER_PRIMARIES:-3}
CLUSTER_REPLICAS=${STAMPEDE_CLUSTER_REPLICAS:-0}
CLUSTER_NODE_TIMEOUT_MS=${STAMPEDE_CLUSTER_NODE_TIMEOUT_MS:-2000}
CLUSTER_DIR=$(abspath "${STAMPEDE_CLUSTER_DIR:-$DATA/cluster-$CLUSTER_PORT}")
CLUSTER_NODES=$((CLUSTER_PRIMARIES * (1 + CLUSTER_REPLICAS)))

# Unix socket paths are limited to 107 bytes; fall back to /tmp for deep checkouts.
if [ "${#PG_SOCKDIR}" -gt 90 ]; then
    PG_SOCKDIR=/tmp/stampede-pg-sock-$(id -u)
fi

IS_ROOT=0
if [ "$(id -u)" -eq 0 ]; then IS_ROOT=1; fi

# ---------------------------------------------------------------------------------------------
# packages

as_root() {
    if [ "$IS_ROOT" -eq 1 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed); install the packages by hand or run as root"
    fi
}

APT_UPDATED=0
SCHEMATHESIS_VERSION=4.32.5
PLAYWRIGHT_VERSION=1.65.1
OHA_VERSION=1.16.0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: install these packages by hand: $*"
    mkdir -p "$DATA"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update (log: $APT_LOG)"
        # fd 9 is the lock: daemons started by package scripts must not inherit it.
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$APT_LOG" 2>&1 </dev/null 9>&-; then
            tail -n 20 "$APT_LOG" >&2 || true
            die "apt-get update failed"
        fi
        APT_UPDATED=1
    fi
    log "apt-get install -y $* (log: $APT_LOG)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" >>"$APT_LOG" 2>&1 </dev/null 9>&-; then
        tail -n 30 "$APT_LOG" >&2 || true
        die "apt-get install $* failed"
    fi
}

ensure_redis_tools() { # $1 = 1: fatal when they cannot be installed
    local missing=0 c
    for c in redis-cli redis-benchmark; do
        command -v "$c" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    if [ "$1" -eq 1 ]; then
        apt_install redis-tools
    else
        (apt_install redis-tools) || log "warning: redis-cli/redis-benchmark missing and could not be installed"
    fi
}

ensure_redis_installed() {
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server redis-tools
    fi
    ensure_redis_tools 1
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not found after installing"
}

PG_BIN=""
find_pg_bin() {
    local d v best="" want=""
    if [ -n "${STAMPEDE_PG_BIN:-}" ]; then
        [ -x "$STAMPEDE_PG_BIN/initdb" ] || die "STAMPEDE_PG_BIN=$STAMPEDE_PG_BIN has no initdb"
        PG_BIN=$STAMPEDE_PG_BIN
        return 0
    fi
    # An existing cluster must be run by the binaries of its own major version.
    if [ -f "$PG_DIR/PG_VERSION" ]; then
        want=$(cat "$PG_DIR/PG_VERSION" 2>/dev/null || true)
        if [ -n "$want" ] && [ -x "/usr/lib/postgresql/$want/bin/initdb" ]; then
            PG_BIN=/usr/lib/postgresql/$want/bin
            return 0
        fi
    fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ ! -x "$d/initdb" ] || [ ! -x "$d/pg_ctl" ]; then continue; fi
        v=${d#/usr/lib/postgresql/}
        v=${v%/bin}
        best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n 1)
    done
    if [ -n "$best" ]; then
        PG_BIN=/usr/lib/postgresql/$best/bin
        if [ -n "$want" ] && [ "$want" != "$best" ]; then
            die "$PG_DIR was created by Postgres $want but only $best is installed (apt-get install postgresql-$want, or remove $PG_DIR)"
        fi
        return 0
    fi
    return 1
}

ensure_pg_installed() {
    if ! find_pg_bin; then
        # The Debian package may create and start its own cluster on 5432: irrelevant, we run ours.
        apt_install postgresql
        find_pg_bin || die "postgres binaries not found under /usr/lib/postgresql/*/bin after installing"
    fi
    if [ "$IS_ROOT" -eq 1 ] && ! id -u "$PG_USER" >/dev/null 2>&1; then
        log "creating system user $PG_USER"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash "$PG_USER" ||
            die "could not create user $PG_USER"
    fi
}

# ---------------------------------------------------------------------------------------------
# lock: serialise concurrent invocations (two initdb's or start/stop races)

take_lock() {
    mkdir -p "$DATA"
    exec 9>>"$DATA/.services.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 300 9 || die "timed out waiting for $DATA/.services.lock"
    fi
}

# ---------------------------------------------------------------------------------------------
# Redis

redis_reply() {
    timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null </dev/null || true
}

redis_ping() { # success only when the server answers PONG
    [ "$(redis_reply)" = "PONG" ]
}

# A Redis replaying a large AOF answers LOADING until it is done: minutes for
# gigabytes. Waiting for it (while it lives) beats starting a second server.
redis_wait_loaded() {
    local waited=0
    while true; do
        case "$(redis_reply)" in
        PONG) log "redis finished loading its data (${waited} s)"; return 0 ;;
        *LOADING*) ;;
        *) return 1 ;;
        esac
        if [ "$waited" -ge "$REDIS_LOAD_WAIT_SECS" ]; then
            die "redis still loading its data after ${REDIS_LOAD_WAIT_SECS} s (STAMPEDE_REDIS_LOAD_WAIT_SECS)"
        fi
        [ $((waited % 10)) -eq 0 ] && log "redis is loading its AOF (${waited} s so far)"
        sleep 1
        waited=$((waited + 1))
    done
}

redis_pid_alive() {
    local pid
    [ -f "$REDIS_PIDFILE" ] || return 1
    pid=$(cat "$REDIS_PIDFILE" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    grep -q redis "/proc/$pid/comm" 2>/dev/null
}

redis_start() {
    ensure_redis_installed
    if redis_ping; then
        log "redis already answers PING on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    if redis_wait_loaded; then
        return 0
    fi
    mkdir -p "$REDIS_DIR"
    log "starting redis-server on 127.0.0.1:$REDIS_PORT (dir $REDIS_DIR)"
    # stdio goes to the log (early errors, before --logfile is opened); fd 9 (lock) is closed.
    # shellcheck disable=SC2094 # redis-server only writes the log; nothing reads it here
    redis-server \
        --bind 127.0.0.1 \
        --port "$REDIS_PORT" \
        --dir "$REDIS_DIR" \
        --appendonly yes \
        --appendfsync always \
        --save "" \
        --latency-tracking no \
        --auto-aof-rewrite-min-size 512mb \
        --pidfile "$REDIS_PIDFILE" \
        --logfile "$REDIS_LOG" \
        --daemonize yes \
        </dev/null >>"$REDIS_LOG" 2>&1 9>&- ||
        {
            tail -n 20 "$REDIS_LOG" >&2 || true
            die "redis-server failed to start"
        }
    local i
    for i in $(seq 1 100); do
        if redis_ping; then
            log "redis is up (${i}00 ms)"
            return 0
        fi
        if redis_wait_loaded; then
            return 0
        fi
        sleep 0.1
    done
    log "redis did not answer PING within 10 s; last lines of $REDIS_LOG:"
    tail -n 30 "$REDIS_LOG" >&2 || true
    die "redis failed to start on port $REDIS_PORT"
}

redis_stop() {
    local pid="" i ours=0 dir
    if redis_pid_alive; then
        pid=$(cat "$REDIS_PIDFILE")
        ours=1
    elif command -v redis-cli >/dev/null 2>&1 && redis_ping; then
        dir=$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get dir 2>/dev/null </dev/null | sed -n 2p || true)
        if [ "$dir" = "$REDIS_DIR" ]; then
            ours=1
        else
            log "redis on port $REDIS_PORT is not ours (dir '$dir'), leaving it alone"
            return 0
        fi
    fi
    if [ "$ours" -eq 0 ]; then
        log "redis (port $REDIS_PORT) is not running"
        return 0
    fi
    log "stopping redis on port $REDIS_PORT"
    # SHUTDOWN fsyncs the AOF and exits; the connection just closes.
    timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 </dev/null || true
    for i in $(seq 1 100); do
        if { [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; } && ! redis_ping; then
            log "redis stopped"
            return 0
        fi
        sleep 0.1
    done
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "redis did not exit after SHUTDOWN; sending SIGTERM to $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || {
                log "redis stopped"
                return 0
            }
            sleep 0.1
        done
        die "redis (pid $pid) does not stop"
    fi
    redis_ping && die "redis on port $REDIS_PORT still answers after SHUTDOWN"
    return 0
}

# ---------------------------------------------------------------------------------------------
# Postgres

as_pg() { # run a Postgres binary as the cluster owner, from a cwd it can read, without fd 9
    if [ "$IS_ROOT" -eq 1 ]; then
        (cd / && runuser -u "$PG_USER" -- "$@" 9>&-)
    else
        "$@" 9>&-
    fi
}

pg_ready() { # 0 = accepting, 1 = rejecting (starting/stopping), 2 = no response, 3 = bad params
    local rc=0
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -t 3 </dev/null || rc=$?
    return "$rc"
}

# User postgres must be able to reach (traverse) the data dir, socket dir and log file.
pg_fix_traverse() {
    [ "$IS_ROOT" -eq 1 ] || return 0
    local target d path
    local -a parts
    for target in "$(dirname "$PG_DIR")" "$PG_SOCKDIR" "$(dirname "$PG_LOG")"; do
        path=""
        IFS=/ read -r -a parts <<<"${target#/}"
        for d in "${parts[@]}"; do
            [ -n "$d" ] || continue
            path=$path/$d
            [ -d "$path" ] || break
            if ! runuser -u "$PG_USER" -- test -x "$path" 2>/dev/null; then
                log "giving others traverse permission (o+x) on $path so user $PG_USER can reach $PG_DIR"
                chmod o+x "$path"
            fi
        done
    done
}

pg_prepare_dirs() {
    mkdir -p "$(dirname "$PG_DIR")" "$(dirname "$PG_LOG")"
    mkdir -p "$PG_SOCKDIR"
    touch "$PG_LOG"
    if [ "$IS_ROOT" -eq 1 ]; then
        [ -d "$PG_DIR" ] || install -d -o "$PG_USER" -g "$(id -gn "$PG_USER")" -m 0700 "$PG_DIR"
        chown "$PG_USER:" "$PG_SOCKDIR" "$PG_LOG"
        chmod 0755 "$PG_SOCKDIR"
        if [ "$(stat -c %U "$PG_DIR")" != "$PG_USER" ]; then
            log "chown -R $PG_USER $PG_DIR"
            chown -R "$PG_USER:" "$PG_DIR"
        fi
        chmod 0700 "$PG_DIR"
        pg_fix_traverse
    fi
}

pg_initdb() {
    pg_prepare_dirs
    if [ -f "$PG_DIR/PG_VERSION" ]; then
        return 0
    fi
    if [ -n "$(ls -A "$PG_DIR" 2>/dev/null)" ]; then
        die "$PG_DIR is not empty but has no PG_VERSION (a half-initialised cluster?): move it away and rerun"
    fi
    log "initdb $PG_DIR ($PG_BIN)"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DIR" -A trust -U "$PG_USER" --no-sync -E UTF8 --locale=C \
        </dev/null >>"$PG_LOG" 2>&1; then
        tail -n 30 "$PG_LOG" >&2 || true
        die "initdb failed (log: $PG_LOG)"
    fi
}

pg_server_running() { # our cluster's postmaster is alive (by pid file)
    local rc=0
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1 </dev/null || rc=$?
    [ "$rc" -eq 0 ]
}

# After a container restart or kill -9, postmaster.pid can name a pid now used by an unrelated
# process, and postgres then refuses to start. Remove it when that pid is not a postgres.
pg_clear_stale_pidfile() {
    local pidfile=$PG_DIR/postmaster.pid pid comm
    [ -f "$pidfile" ] || return 0
    pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        case $comm in postgres* | postmaster*) return 0 ;; esac
    fi
    log "removing stale $pidfile (pid ${pid:-?} is not a running postgres)"
    rm -f "$pidfile"
}

pg_create_db() {
    local exists
    exists=$("$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" </dev/null) ||
        die "cannot query postgres on 127.0.0.1:$PG_PORT as $PG_USER"
    if [ "$exists" != "1" ]; then
        log "creating database $PG_DB"
        "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
            -c "CREATE DATABASE $PG_DB" </dev/null >&2 ||
            die "CREATE DATABASE $PG_DB failed"
    fi
}

pg_start() {
    ensure_pg_installed
    local rc=0 i
    pg_ready || rc=$?
    if [ "$rc" -eq 1 ]; then
        # starting up or shutting down: wait for it to settle
        for i in $(seq 1 300); do
            rc=0
            pg_ready || rc=$?
            [ "$rc" -eq 1 ] || break
            sleep 0.1
        done
    fi
    if [ "$rc" -eq 0 ]; then
        log "postgres already accepts connections on 127.0.0.1:$PG_PORT"
    else
        pg_initdb
        if pg_server_running; then
            # alive but not answering on our port (e.g. still shutting down): stop it first
            log "postgres in $PG_DIR is running but not ready on port $PG_PORT; restarting it"
            pg_stop
        fi
        pg_clear_stale_pidfile
        log "starting postgres on 127.0.0.1:$PG_PORT (data $PG_DIR, log $PG_LOG)"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_LOG" -w -t 120 \
            -o "-p $PG_PORT -k $PG_SOCKDIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on -c shared_buffers=256MB -c synchronous_commit=on" \
            start </dev/null >&2; then
            log "pg_ctl start failed; last lines of $PG_LOG:"
            tail -n 30 "$PG_LOG" >&2 || true
            die "postgres failed to start on port $PG_PORT"
        fi
        for i in $(seq 1 300); do
            pg_ready && break
            sleep 0.1
        done
        pg_ready || {
            tail -n 30 "$PG_LOG" >&2 || true
            die "postgres started but does not accept connections on 127.0.0.1:$PG_PORT"
        }
        log "postgres is up"
    fi
    pg_create_db
}

pg_stop() {
    if ! find_pg_bin; then
        log "postgres is not installed: nothing to stop"
        return 0
    fi
    local i rc
    if [ -f "$PG_DIR/PG_VERSION" ] && pg_server_running; then
        log "stopping postgres ($PG_DIR, port $PG_PORT)"
        if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -m fast -w -t 120 stop </dev/null >&2; then
            log "fast shutdown did not finish; trying immediate"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -m immediate -w -t 60 stop </dev/null >&2 ||
                die "could not stop postgres in $PG_DIR"
        fi
    else
        log "postgres in $PG_DIR is not running"
    fi
    # pg_ctl -w returns once postmaster.pid is gone; also make sure the port no longer answers.
    for i in $(seq 1 100); do
        rc=0
        pg_ready || rc=$?
        if [ "$rc" -eq 2 ]; then
            return 0
        fi
        sleep 0.1
    done
    die "something still answers on 127.0.0.1:$PG_PORT but it is not the cluster in $PG_DIR"
}

# ---------------------------------------------------------------------------------------------
# Redis Cluster: private nodes from Debian's redis-server, each in its own
# folder with its own nodes-<port>.conf, with the same durability settings as
# the private Redis.

cluster_ports() { seq "$CLUSTER_PORT" $((CLUSTER_PORT + CLUSTER_NODES - 1)); }

cluster_cli() { # $1 = port, then the command
    local port=$1
    shift
    timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null </dev/null || true
}

cluster_ok() { # every node says cluster_state:ok and knows every node
    local port
    for port in $(cluster_ports); do
        cluster_cli "$port" cluster info | grep -q '^cluster_state:ok' || return 1
        [ "$(cluster_cli "$port" cluster nodes | grep -c .)" -eq "$CLUSTER_NODES" ] || return 1
    done
}

cluster_url() {
    local url port
    url="redis-cluster://127.0.0.1:$CLUSTER_PORT"
    for port in $(seq $((CLUSTER_PORT + 1)) $((CLUSTER_PORT + CLUSTER_PRIMARIES - 1))); do
        if [ "$port" -eq $((CLUSTER_PORT + 1)) ]; then url="$url?"; else url="$url&"; fi
        url="${url}node=127.0.0.1:$port"
    done
    printf '%s\n' "$url"
}

cluster_stop() {
    local port pid
    for port in $(cluster_ports); do
        pid=$(cat "$CLUSTER_DIR/$port/redis.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q redis "/proc/$pid/comm" 2>/dev/null; then
            # The data is thrown away below: no SHUTDOWN save needed.
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for port in $(cluster_ports); do
        pid=$(cat "$CLUSTER_DIR/$port/redis.pid" 2>/dev/null || true)
        while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
    rm -rf "$CLUSTER_DIR"
    log "cluster on ports $CLUSTER_PORT.. stopped, $CLUSTER_DIR removed"
}

cluster_node_start() { # $1 = port: start that node on its own dir (a restarted node rejoins from nodes.conf)
    local port=$1 dir=$CLUSTER_DIR/$1
    mkdir -p "$dir"
    redis-server \
        --bind 127.0.0.1 \
        --port "$port" \
        --dir "$dir" \
        --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" \
        --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT_MS" \
        --appendonly yes \
        --appendfsync always \
        --save "" \
        --latency-tracking no \
        --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" \
        --daemonize yes \
        </dev/null >>"$dir/redis.log" 2>&1 9>&- || die "redis-server failed to start on port $port (see $dir/redis.log)"
}

cluster_start() {
    ensure_redis_installed
    if cluster_ok; then
        log "the cluster on ports $CLUSTER_PORT.. is up ($CLUSTER_NODES nodes)"
        return 0
    fi
    # A half-made cluster (killed mid-creation, a node lost) is not repaired:
    # it holds test data only, so it is made again.
    cluster_stop
    local port ports=()
    for port in $(cluster_ports); do
        [ $((port + 10000)) -lt 32768 ] || die "cluster port $port: its bus port $((port + 10000)) is in the ephemeral range"
        if [ "$(cluster_cli "$port" ping)" = PONG ]; then
            die "port $port already answers PING and is not this cluster's node: pick STAMPEDE_CLUSTER_PORT"
        fi
        cluster_node_start "$port"
        ports+=("127.0.0.1:$port")
    done
    local i
    for port in $(cluster_ports); do
        for i in $(seq 1 100); do
            [ "$(cluster_cli "$port" ping)" = PONG ] && break
            sleep 0.1
        done
        [ "$(cluster_cli "$port" ping)" = PONG ] || die "cluster node $port did not start (see $CLUSTER_DIR/$port/redis.log)"
    done
    log "creating a cluster of $CLUSTER_PRIMARIES primaries with $CLUSTER_REPLICAS replica(s) each on ports $CLUSTER_PORT.."
    timeout 60 redis-cli --cluster create "${ports[@]}" --cluster-replicas "$CLUSTER_REPLICAS" --cluster-yes \
        </dev/null >"$CLUSTER_DIR/create.log" 2>&1 || {
        tail -n 20 "$CLUSTER_DIR/create.log" >&2
        die "redis-cli --cluster create failed"
    }
    for i in $(seq 1 300); do
        if cluster_ok; then
            log "cluster is up: cluster_state:ok on all $CLUSTER_NODES nodes ($((i / 10)) s)"
            cluster_wait_replicas
            return 0
        fi
        sleep 0.1
    done
    die "the cluster on ports $CLUSTER_PORT.. did not reach cluster_state:ok within 30 s"
}

# cluster_state:ok comes before the replicas' first sync: until each primary
# has its replicas online, every `WAIT` (STAMPEDE_REDIS_WAIT_REPLICAS) would
# come up short and its writes answer 503. Waits for them, 30 s at most.
cluster_wait_replicas() {
    [ "$CLUSTER_REPLICAS" -gt 0 ] || return 0
    local port i online
    for i in $(seq 1 300); do
        online=0
        for port in $(cluster_ports); do
            cluster_cli "$port" info replication | tr -d '\r' | grep -q '^role:slave' && { online=$((online + 1)); continue; }
            [ "$(cluster_cli "$port" info replication | tr -d '\r' | grep -c 'state=online')" -ge "$CLUSTER_REPLICAS" ] \
                && online=$((online + 1))
        done
        if [ "$online" -eq "$CLUSTER_NODES" ]; then
            log "replicas in sync: each primary has $CLUSTER_REPLICAS online ($((i / 10)) s)"
            return 0
        fi
        sleep 0.1
    done
    die "the cluster's replicas were not all online within 30 s"
}

# ---------------------------------------------------------------------------------------------

status() {
    local rc=0
    if command -v redis-cli >/dev/null 2>&1 && redis_ping; then
        log "redis    127.0.0.1:$REDIS_PORT  up"
    else
        log "redis    127.0.0.1:$REDIS_PORT  down"
    fi
    if find_pg_bin; then
        pg_ready || rc=$?
        case $rc in
        0) log "postgres 127.0.0.1:$PG_PORT  up ($PG_DIR)" ;;
        1) log "postgres 127.0.0.1:$PG_PORT  starting/stopping ($PG_DIR)" ;;
        *) log "postgres 127.0.0.1:$PG_PORT  down ($PG_DIR)" ;;
        esac
    else
        log "postgres not installed"
    fi
}

# oha from crates.io into $DATA/tools/bin. (It does not build without a TLS
# feature, so its default rustls comes along, with a C build of aws-lc.)
install_oha() {
    if [ -x "$DATA/tools/bin/oha" ] && "$DATA/tools/bin/oha" --version 2>/dev/null | grep -qx "oha $OHA_VERSION"; then
        return 0
    fi
    if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: it builds oha (install Rust from https://rustup.rs)"
    log "installing oha $OHA_VERSION into $DATA/tools (cargo install --locked, once: a few minutes)"
    cargo install --root "$DATA/tools" --locked --version "$OHA_VERSION" oha >&2 ||
        die "cargo install oha failed"
}

redis_url() { printf 'redis://127.0.0.1:%s\n' "$REDIS_PORT"; }
pg_url() { printf 'postgres://%s@127.0.0.1:%s/%s\n' "$PG_USER" "$PG_PORT" "$PG_DB"; }
emit() { printf 'export %s=%q\n' "$1" "$2"; }

usage() {
    cat >&2 <<EOF
usage: $0 [up|stop|pg-start|pg-stop|redis-start|redis-stop|cluster-start|cluster-stop|cluster-node-start|test-tools|oha|status]
  up (default)  make sure private Redis and Postgres run; print export lines for eval
  cluster-start make sure a private Redis Cluster runs (STAMPEDE_CLUSTER_*); print REDIS_CLUSTER_URL
  cluster-stop  stop that cluster and delete its data
  cluster-node-start  start node STAMPEDE_CLUSTER_NODE of that cluster again (it rejoins)
  test-tools    install what the tests need besides the services (prometheus, promtool,
                chromium, playwright-core, schemathesis, oha)
  oha           install oha only (cargo install, into .data/tools)
EOF
}

main() {
    local cmd=${1:-up}
    case $cmd in
    up | start)
        take_lock
        if [ -n "${REDIS_URL:-}" ]; then
            log "REDIS_URL is set: not starting a private redis"
            ensure_redis_tools 0
            emit REDIS_URL "$REDIS_URL"
        else
            redis_start
            emit REDIS_URL "$(redis_url)"
        fi
        if [ -n "${DATABASE_URL:-}" ]; then
            log "DATABASE_URL is set: not starting a private postgres"
            emit DATABASE_URL "$DATABASE_URL"
        else
            pg_start
            emit DATABASE_URL "$(pg_url)"
        fi
        ;;
    stop)
        take_lock
        redis_stop
        pg_stop
        ;;
    pg-start)
        take_lock
        pg_start
        emit DATABASE_URL "$(pg_url)"
        ;;
    pg-stop)
        take_lock
        pg_stop
        ;;
    redis-start)
        take_lock
        redis_start
        emit REDIS_URL "$(redis_url)"
        ;;
    redis-stop)
        take_lock
        redis_stop
        ;;
    cluster-start)
        take_lock
        cluster_start
        emit REDIS_CLUSTER_URL "$(cluster_url)"
        ;;
    cluster-stop)
        take_lock
        cluster_stop
        ;;
    cluster-node-start)
        # One node of the running cluster, e.g. a primary killed by a failover
        # test: it rejoins as a replica of the node promoted in its place.
        [ -n "${STAMPEDE_CLUSTER_NODE:-}" ] || die "cluster-node-start needs STAMPEDE_CLUSTER_NODE=<port>"
        take_lock
        cluster_node_start "$STAMPEDE_CLUSTER_NODE"
        ;;
    test-tools)
        # What the test command needs beyond the services: Prometheus and
        # promtool for the dashboard and alert-rule test, schemathesis (in a
        # venv under .data/) for the fuzzing run.
        take_lock
        if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
            apt_install prometheus
            # The package may start its own service; the tests run their own.
            as_root systemctl stop prometheus >/dev/null 2>&1 || true
        fi
        if ! command -v curl >/dev/null 2>&1; then apt_install curl; fi
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_install python3-venv; fi
        # The live page's browser test: Debian's Chromium, driven by
        # playwright-core from npm (it never downloads a browser of its own).
        if ! command -v chromium >/dev/null 2>&1; then apt_install chromium; fi
        if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
        if [ ! -d "$DATA/node/node_modules/playwright-core" ]; then
            log "installing playwright-core into $DATA/node"
            mkdir -p "$DATA/node"
            npm install --prefix "$DATA/node" --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >&2 ||
                die "npm install playwright-core failed"
        fi
        if [ ! -x "$DATA/venv/bin/schemathesis" ]; then
            log "installing schemathesis into $DATA/venv"
            python3 -m venv "$DATA/venv" >&2
            "$DATA/venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >&2 ||
                die "pip install schemathesis failed"
        fi
        # oha, the load generator of loadtest/oha.sh's recipes (the test
        # command's oha step runs one), built once into $DATA/tools and
        # reused. Built after the lock is released: cargo takes minutes and
        # serialises its own installs, the services must not wait for it.
        # The test command builds it on its own, beside its other steps
        # (STAMPEDE_TEST_TOOLS_NO_OHA=1 here, then `oha`).
        exec 9>&-
        if [ "${STAMPEDE_TEST_TOOLS_NO_OHA:-0}" != 1 ]; then install_oha; fi
        ;;
    oha)
        install_oha
        ;;
    status)
        status
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
