#!/usr/bin/env bash
# shellcheck disable=SC2317 # stop_engine and cleanup run from the EXIT trap
# One command for a load run against a freshly started engine.
#
#   loadtest/run.sh contest|sustained|contention|ingest|orders|wallet|settlement|faults|oha [extra loadtest flags]
#   loadtest/run.sh costs [extra loadtest costs flags]   # a running deployment: starts nothing
#   loadtest/run.sh script-bench [--script wallet] [--variant DIR ...]   # the sale's (or wallet's) scripts alone
#
# contest, sustained, contention, orders, wallet and ingest (and the baseline
# server's runs) print a cost table over their measured phase and write it
# into the JSON summary ("cost"): per request (wallet: operation, ingest:
# line), Redis CPU from INFO cpu and the commands' time from INFO
# commandstats, summed over every primary of a cluster and per primary; the
# scripts' time (EVALSHA/EVAL/FCALL) beside their inner commands' (hset,
# xadd, ...: "Lua itself" is the difference); per script its calls (the
# engine's /metrics) and its share of the time; engine, Redis and Postgres
# CPU from /proc; Postgres CPU per event the flusher wrote. The split of the
# time by script comes from Redis's slow log, sampled in short slices of the
# phase (the table is read over the other slices): run.sh does that only on
# the Redis it starts itself (see REDIS_URL below), never on one it is given.
#
# costs measures a deployment already running and loaded by something else:
# ENGINE_URL (its /metrics counts the requests and script calls) and
# REDIS_URL (redis-cluster://h:p?node=h2:p2 reads every primary), for
# COST_SECS seconds or until the engine has answered COST_REQUESTS
# requests; ENGINE_PID and DATABASE_URL add the engine's and Postgres's CPU
# when they run on this machine. No slow log there: it would reconfigure a
# Redis run.sh did not start.
#
# contest and sustained then run the same scenario against the baseline server
# (loadtest/src/bin/baseline-server.rs: hyper + one EVALSHA per request, fresh
# keys) and print each figure as a ratio engine / baseline server. orders and
# wallet then drive the baseline server's POST /checkout (one request, one
# script call, like one order or one wallet operation) over the same
# connection count, for as long as the engine's run, and print the engine's
# orders/s or operations/s against its requests/s.
#
# script-bench runs the sale's batch scripts (lua/checkout.lua and
# lua/purchase.lua, or each --variant DIR's; with --script wallet,
# lua/wallet_apply.lua over the wallet scenario's mix) straight against the
# run's own Redis, no engine: interleaved blocks per variant, EVALSHA and CPU µs per
# request, each variant's paired ratio to the first (loadtest script-bench
# --help). Script changes too small for a whole run's noise are decided here.
#
# faults runs the fault cases (loadtest faults --help): the engine's Redis
# connections dropped, Redis killed with SIGKILL and restarted, a flood at 5x
# capacity; each invariant PASS, FAIL or SKIPPED. Unless REDIS_URL was set
# before run.sh, the engine gets a private redis-server that run.sh starts
# (AOF, appendfsync always) so that the kill case may kill it; with REDIS_URL
# set, drop and flood run against that Redis and kill is SKIPPED.
#
# oha runs one recipe of loadtest/oha.sh (OHA_RECIPE: checkout, purchase,
# orders or wallet) against the fresh engine, then `loadtest oha` checks its
# JSON result: no error, a rate, only the statuses the recipe expects.
#
# Environment (optional):
#   USERS, ITEMS, LIMIT   scenario size (defaults per scenario, LIMIT 10); also given to the engine
#                         (orders: the baseline server's items, 20000)
#   PRODUCTS, STOCK, BUYERS, OPERATIONS, CONNECTIONS
#                         orders: 20 products x 5000, 2000 buyers, 150000 operations, 200 connections
#   SMALL_LINES, LINES    ingest: lines of the small (memory reference) and large files
#                         (100000 and 1000000; SMALL_LINES=0 uploads the large file only)
#   SMALL_SEED, SEED      ingest: generator seeds of the two files (1 and 2: disjoint ids)
#   REGEN=1               ingest: generate the files again even if they exist
#   TXNS, SMALL_TXNS      settlement: transactions of the large range (Jan 2025, 1000 merchants) and of
#                         the small one (Mar 2025, the memory reference): 1000000 and 100000
#   RUNS                  settlement: timed runs, each with its psql baseline (3)
#   STAMPEDE_SETTLEMENT_* settlement: the engine's settings (workers, batch rows, chunks in flight)
#   LOAD_PORT             port of the engine under test (18080)
#   NO_BASELINE_SERVER=1  contest, sustained: skip the baseline server's run
#   LOAD_KEYS=1           keys on: the engine gets a keys file with one key of every scope, and the
#                         driver sends it (STAMPEDE_API_KEY); unset, the engine serves on loopback in
#                         open mode
#   LOAD_KEYS=compare     what the key check costs: the scenario runs keys off (with the baseline
#                         server unless NO_BASELINE_SERVER=1), then keys on, each on a fresh engine,
#                         and a table sets requests/s and CPU us per request side by side
#   BASELINE_PORT         port of the baseline server (LOAD_PORT + 1); it gets the engine's
#                         STAMPEDE_WORKER_THREADS and STAMPEDE_REDIS_POOL when they are set
#   KEEP_DATA=1           keep the load database and the Redis keys afterwards (the run's own
#                         redis-server is stopped, its data directory kept; its own cluster goes)
#   RUST_LOG              engine log level (warn)
#   DRIVER_THREADS        the driver's tokio threads (1: it shares 2 cores with the engine,
#                         Redis and Postgres, and one thread costs it the least CPU per request)
#   LOADTEST_PROFILE      release (default: a release build, for figures) or dev (the debug build
#                         `cargo test` already made: the test command's short run checks invariants,
#                         not speed)
#   REDIS_URL             use this Redis (redis-cluster://... for a cluster); unset, run.sh starts a
#                         redis-server of its own for the run on LOAD_REDIS_PORT (AOF, appendfsync
#                         always), which only this run uses (INFO counts every client) and whose slow
#                         log it may sample; deleted afterwards
#   LOAD_REDIS_PORT       port of that redis-server (LOAD_PORT + 3; FAULTS_REDIS_PORT is read too)
#   LOAD_REDIS=cluster    instead, a Redis Cluster of its own (3 primaries, scripts/services.sh
#                         cluster-start) on LOAD_CLUSTER_PORT.. (LOAD_PORT + 4; cluster bus ports
#                         + 10000), stopped and deleted afterwards: the cost table per primary (the
#                         sale's Redis checks read the standalone key layout and FAIL there)
#   COST_SLOWLOG=0        no slow-log sampling even on run.sh's own Redis (no split by script)
#   REDIS_PERF=1          record Redis with perf for each measured phase (engine's, baseline's) into
#                         $OUT_DIR/perf-redis-<server>-<scenario>-<epoch>.data and split Redis's CPU
#                         by what it did (commands, redis.call glue, Lua, AOF, network); useful only
#                         with a redis-server built with frame pointers first in PATH (README.md);
#                         best with COST_SLOWLOG=0, as the slow log's slices are recorded too
#   DATABASE_URL          use this Postgres instead of the private one (see scripts/services.sh)
#   ENGINE_URL, ENGINE_PID, COST_SECS (10), COST_REQUESTS   costs: see above
#   STAMPEDE_QUEUE_DEADLINE_MS  faults: given to the engine (50 unless set), so the flood is shed fast
#   OHA_RECIPE            oha: the recipe (checkout); SECS, CONNECTIONS, CODES go to loadtest/oha.sh
#
# Output: the loadtest report on stdout; JSON summary and engine log in .data/loadtest/.
# Exit code: the loadtest's, the worse of the two runs (0 all invariants passed,
# 1 an invariant failed, 2 setup error).
set -euo pipefail

usage() { echo "usage: loadtest/run.sh contest|sustained|contention|ingest|orders|wallet|settlement|faults|oha|costs|script-bench [loadtest flags]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
SCENARIO=$1
shift

if [[ ${LOAD_KEYS:-} == compare ]]; then
  # Two runs of this script, one after the other (they would compete for the
  # CPUs side by side), each writing where its JSON summary went.
  off_at=$(mktemp) on_at=$(mktemp)
  set +e
  LOAD_KEYS='' RUN_JSON_PATH_FILE=$off_at "$0" "$SCENARIO" "$@"
  off_rc=$?
  LOAD_KEYS=1 NO_BASELINE_SERVER=1 RUN_JSON_PATH_FILE=$on_at "$0" "$SCENARIO" "$@"
  on_rc=$?
  set -e
  off_json=$(cat "$off_at") on_json=$(cat "$on_at")
  rm -f "$off_at" "$on_at"
  if [[ -f $off_json && -f $on_json ]]; then
    python3 - "$off_json" "$on_json" <<'PY'
import json, sys
off, on = (json.load(open(p)) for p in sys.argv[1:3])
def get(d, *path):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d
rows = [("purchases/s", ("purchases_per_sec",)), ("requests/s", ("requests_per_sec",)),
        ("orders/s", ("orders_per_sec",)), ("operations/s", ("operations_per_sec",))]
rows += [(f"{role} CPU us/request", ("cpu", "us_per_request", role))
         for role in ("server", "redis", "postgres", "machine")]
print(f"keys off vs keys on ({sys.argv[1]} / {sys.argv[2]}):")
print(f"  {'figure':<26}{'keys off':>12}{'keys on':>12}{'on/off':>9}")
for name, path in rows:
    a, b = get(off, *path), get(on, *path)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        print(f"  {name:<26}{a:>12.1f}{b:>12.1f}{(b / a if a else float('nan')):>9.3f}")
PY
  fi
  exit $(( off_rc > on_rc ? off_rc : on_rc ))
fi

case "$SCENARIO" in
  contest)    USERS=${USERS:-1000};  ITEMS=${ITEMS:-10000} ;;
  sustained)  USERS=${USERS:-20000}; ITEMS=${ITEMS:-200000} ;;
  contention) USERS=${USERS:-2000};  ITEMS=${ITEMS:-20} ;;
  orders)     USERS=${USERS:-2000};  ITEMS=${ITEMS:-20000} ;;
  # The engine still needs a sale configured; nobody buys from it.
  ingest)     USERS=${USERS:-1000};  ITEMS=${ITEMS:-10000}
              SMALL_LINES=${SMALL_LINES:-100000}; LINES=${LINES:-1000000}
              SMALL_SEED=${SMALL_SEED:-1};        SEED=${SEED:-2} ;;
  # Players bet, win and refund while SSE clients listen; the sale is idle.
  wallet)     USERS=${USERS:-1000};  ITEMS=${ITEMS:-10000}
              PLAYERS=${PLAYERS:-2000}; SSE_CLIENTS=${SSE_CLIENTS:-1000}
              CONNECTIONS=${CONNECTIONS:-200}; SECS=${SECS:-20} ;;
  settlement) USERS=${USERS:-1000};  ITEMS=${ITEMS:-10000}
              TXNS=${TXNS:-1000000}; SMALL_TXNS=${SMALL_TXNS:-100000}; RUNS=${RUNS:-3} ;;
  # Each case buys from a range of one sale of its own (see loadtest faults --help).
  faults)     USERS=${USERS:-1000};  ITEMS=${ITEMS:-1000000}; LIMIT=${LIMIT:-1000000}
              export STAMPEDE_QUEUE_DEADLINE_MS=${STAMPEDE_QUEUE_DEADLINE_MS:-50} ;;
  # The checkout recipe asks for items up to 9999, the purchase one up to CODES.
  oha)        USERS=${USERS:-1000};  ITEMS=${ITEMS:-10000}; OHA_RECIPE=${OHA_RECIPE:-checkout} ;;
  costs)      ;;
  script-bench) ;;
  *) usage ;;
esac
LIMIT=${LIMIT:-10}
# Bonus grants need the admin token (wallet).
export STAMPEDE_ADMIN_TOKEN=${STAMPEDE_ADMIN_TOKEN:-loadtest-admin-token-0123456789}
LOAD_PORT=${LOAD_PORT:-18080}
BASELINE_PORT=${BASELINE_PORT:-$((LOAD_PORT + 1))}
BASELINE_SERVER=""
case "$SCENARIO" in
  contest|sustained|orders|wallet) [[ -n ${NO_BASELINE_SERVER:-} ]] || BASELINE_SERVER=1 ;;
esac
# The admin token of the engine under test (orders creates its products).
LOAD_ADMIN_TOKEN=${STAMPEDE_ADMIN_TOKEN:-loadtest-admin-token-0123456789}

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# Was the Redis given (used as it is: never reconfigured, never killed), or
# is it ours to start? Ours: INFO's counters are this run's alone, the slow
# log may be sampled, and the faults scenario may kill it.
USER_REDIS_URL=${REDIS_URL:-}
OWN_REDIS_PORT=${LOAD_REDIS_PORT:-${FAULTS_REDIS_PORT:-$((LOAD_PORT + 3))}}
OWN_CLUSTER_PORT=${LOAD_CLUSTER_PORT:-$((LOAD_PORT + 4))}
if [[ -z $USER_REDIS_URL && $SCENARIO != costs ]]; then
  # services.sh leaves a Redis alone when REDIS_URL is set: ours starts below.
  case ${LOAD_REDIS:-server} in
    server)  REDIS_URL=redis://127.0.0.1:$OWN_REDIS_PORT ;;
    cluster) REDIS_URL=redis-cluster://127.0.0.1:$OWN_CLUSTER_PORT ;;
    *) echo "run.sh: LOAD_REDIS is server or cluster, not $LOAD_REDIS" >&2; exit 2 ;;
  esac
  export REDIS_URL
fi

# Private Postgres (or the one already in DATABASE_URL). costs starts nothing.
if [[ $SCENARIO == costs ]]; then
  :
elif [[ -f scripts/services.sh ]]; then
  services_env=$(bash scripts/services.sh)
  eval "$services_env"
elif [[ -z ${REDIS_URL:-} || -z ${DATABASE_URL:-} ]]; then
  echo "run.sh: scripts/services.sh is missing and REDIS_URL/DATABASE_URL are not set" >&2
  exit 2
fi
: "${REDIS_URL:?set REDIS_URL}"
if [[ $SCENARIO != costs ]]; then : "${DATABASE_URL:?services.sh did not set DATABASE_URL}"; fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "run.sh: open files limit $(ulimit -n)" >&2

# LOADTEST_PROFILE=dev runs the debug binaries `cargo test` already built
# (the test command's short load run); release, the default, measures.
case "${LOADTEST_PROFILE:-release}" in
  release) cargo build --release --workspace; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release ;;
  # The test step's own build, a no-op after it (`cargo build` would resolve
  # the dependencies' features without the tests' and compile them again).
  dev)     cargo test --workspace --all-targets --no-run; BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug ;;
  *) echo "run.sh: LOADTEST_PROFILE is dev or release, not ${LOADTEST_PROFILE}" >&2; exit 2 ;;
esac

if [[ $SCENARIO == costs ]]; then
  # The deployment runs and is loaded already: only read it.
  costs_args=(--url "${ENGINE_URL:-http://127.0.0.1:8080}" --redis-url "$REDIS_URL")
  if [[ -n ${COST_REQUESTS:-} ]]; then costs_args+=(--requests "$COST_REQUESTS"); else costs_args+=(--secs "${COST_SECS:-10}"); fi
  if [[ -n ${ENGINE_PID:-} ]]; then costs_args+=(--engine-pid "$ENGINE_PID"); fi
  if [[ -n ${DATABASE_URL:-} ]]; then costs_args+=(--database-url "$DATABASE_URL"); fi
  mkdir -p "$ROOT/.data/loadtest"
  COSTS_JSON=$ROOT/.data/loadtest/costs-$(date +%s).json
  set +e
  "$BIN/loadtest" costs "${costs_args[@]}" --json "$COSTS_JSON" --threads "${DRIVER_THREADS:-1}" "$@"
  rc=$?
  set -e
  echo "run.sh: JSON summary $COSTS_JSON" >&2
  exit "$rc"
fi

EPOCH=$(date +%s)
PREFIX=lt$EPOCH
LOAD_DB=stampede_load_$EPOCH
OUT_DIR=$ROOT/.data/loadtest
mkdir -p "$OUT_DIR"
ENGINE_LOG=$OUT_DIR/engine-$SCENARIO-$EPOCH.log
JSON_OUT=$OUT_DIR/$SCENARIO-$EPOCH.json
# The baseline server sells from keys of its own: lt<epoch>b:{0}:...
BASELINE_PREFIX=${PREFIX}b
BASELINE_LOG=$OUT_DIR/baseline-server-$SCENARIO-$EPOCH.log
BASELINE_JSON=$OUT_DIR/$SCENARIO-$EPOCH-baseline-server.json

# ingest: the NDJSON files, generated once per (lines, seed) and reused: the
# generator is deterministic for a seed. Written under a temporary name, so
# an interrupted generation is never mistaken for a file.
purchases_file() {
  local lines=$1 seed=$2
  local file=$OUT_DIR/purchases-$lines-seed$seed.ndjson
  if [[ -n ${REGEN:-} || ! -s $file ]]; then
    echo "run.sh: generating $file" >&2
    # Command substitution does not inherit set -e: check each step.
    "$BIN/stampede" gen-purchases --count "$lines" --output "$file.partial" --seed "$seed" >&2 \
      || { echo "run.sh: stampede gen-purchases failed" >&2; return 1; }
    mv -f "$file.partial" "$file" || return 1
  else
    echo "run.sh: reusing $file (REGEN=1 to generate it again)" >&2
  fi
  printf '%s\n' "$file"
}
SMALL_FILE=""
LARGE_FILE=""
if [[ $SCENARIO == ingest ]]; then
  if [[ $SMALL_LINES != 0 ]]; then
    SMALL_FILE=$(purchases_file "$SMALL_LINES" "$SMALL_SEED")
  fi
  LARGE_FILE=$(purchases_file "$LINES" "$SEED")
fi

# postgres://user@host:port/db?params -> same server, other database.
url_no_query=${DATABASE_URL%%\?*}
query=""
[[ $DATABASE_URL == *\?* ]] && query="?${DATABASE_URL#*\?}"
server=${url_no_query%/*}
if [[ $server != *://* ]]; then
  echo "run.sh: cannot find the database name in DATABASE_URL" >&2
  exit 2
fi
ADMIN_URL=$server/postgres$query
LOAD_URL=$server/$LOAD_DB$query

ENGINE_PID=""
BASELINE_PID=""
DB_CREATED=""
OWN_REDIS_DIR=""
OWN_CLUSTER_DIR=""

# stop_pid NAME PID: SIGTERM, SIGKILL after 30 s.
stop_pid() {
  local name=$1 pid=$2
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: $name did not stop within 30 s of SIGTERM: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}
stop_engine() { stop_pid engine "$ENGINE_PID"; ENGINE_PID=""; }
# The run's own redis-server (daemonized: its pid is in its pid file; the
# faults kill case may have started it again).
stop_own_redis() {
  [[ -n $OWN_REDIS_DIR ]] || return 0
  local pid=""
  [[ -f $OWN_REDIS_DIR/redis.pid ]] && pid=$(cat "$OWN_REDIS_DIR/redis.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [[ -z ${KEEP_DATA:-} ]]; then rm -rf "$OWN_REDIS_DIR"; fi
  OWN_REDIS_DIR=""
}
# The run's own cluster (services.sh stops its nodes and deletes their data).
stop_own_cluster() {
  [[ -n $OWN_CLUSTER_DIR ]] || return 0
  STAMPEDE_CLUSTER_PORT=$OWN_CLUSTER_PORT STAMPEDE_CLUSTER_DIR=$OWN_CLUSTER_DIR \
    bash scripts/services.sh cluster-stop >/dev/null 2>&1 \
    || echo "run.sh: could not stop the run's cluster on $OWN_CLUSTER_PORT.." >&2
  OWN_CLUSTER_DIR=""
}
stop_baseline_server() { stop_pid baseline-server "$BASELINE_PID"; BASELINE_PID=""; }

# delete_keys PATTERN: the run's keys, on the Redis server or on every
# primary of a cluster (each primary scanned for its own keys, deleted one
# by one there: keys of several slots cannot go in one DEL).
delete_keys() {
  local pattern=$1 seed node
  if [[ $REDIS_URL == redis-cluster://* ]]; then
    seed=${REDIS_URL#redis-cluster://}
    seed=${seed%%\?*}
    seed=${seed##*@}
    for node in $(timeout 10 redis-cli -h "${seed%:*}" -p "${seed##*:}" cluster nodes 2>/dev/null \
                  | awk '$3 ~ /master/ && $3 !~ /fail/ { split($2, a, "@"); print a[1] }'); do
      timeout 60 redis-cli -h "${node%:*}" -p "${node##*:}" --scan --pattern "$pattern" 2>/dev/null \
        | sed 's/^/DEL /' | timeout 60 redis-cli -h "${node%:*}" -p "${node##*:}" >/dev/null 2>&1 || true
    done
  else
    timeout 60 redis-cli -u "$REDIS_URL" --scan --pattern "$pattern" 2>/dev/null \
      | timeout 60 xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
  fi
}

# wait_healthy NAME PID PORT LOG: until GET /health answers 200 (30 s at most).
wait_healthy() {
  local name=$1 pid=$2 port=$3 log=$4 code
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: the $name exited during startup; last log lines:" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/health" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  echo "run.sh: GET /health of the $name did not answer 200 within 30 s; last log lines:" >&2
  tail -n 20 "$log" >&2
  return 1
}

cleanup() {
  local rc=$?
  stop_engine
  stop_baseline_server
  [[ -n ${LOAD_KEYS_FILE:-} ]] && rm -f "$LOAD_KEYS_FILE"
  if [[ -n ${KEEP_DATA:-} ]]; then
    echo "run.sh: kept database $LOAD_DB and Redis keys $PREFIX:* and $BASELINE_PREFIX:*${OWN_REDIS_DIR:+ (in $OWN_REDIS_DIR)}" >&2
  else
    if [[ -n $DB_CREATED ]]; then
      psql "$ADMIN_URL" -qX -c "DROP DATABASE IF EXISTS $LOAD_DB WITH (FORCE)" >/dev/null 2>&1 \
        || echo "run.sh: could not drop database $LOAD_DB" >&2
    fi
    # The run's own Redis goes with its keys.
    if [[ -z $OWN_REDIS_DIR$OWN_CLUSTER_DIR ]] && command -v redis-cli >/dev/null; then
      for pattern in "$PREFIX:*" "$BASELINE_PREFIX:*"; do delete_keys "$pattern"; done
    fi
  fi
  stop_own_redis
  stop_own_cluster
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LOAD_PORT/health"; then
  echo "run.sh: something already listens on 127.0.0.1:$LOAD_PORT (set LOAD_PORT)" >&2
  exit 2
fi
if [[ -n $BASELINE_SERVER ]] && curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$BASELINE_PORT/health"; then
  echo "run.sh: something already listens on 127.0.0.1:$BASELINE_PORT (set BASELINE_PORT)" >&2
  exit 2
fi

if [[ -z $USER_REDIS_URL && ${LOAD_REDIS:-server} == cluster ]]; then
  # The run's own cluster (3 primaries, as services.sh makes them: AOF, fsync always).
  OWN_CLUSTER_DIR=$OUT_DIR/cluster-$SCENARIO-$EPOCH
  if ! cluster_env=$(STAMPEDE_CLUSTER_PORT=$OWN_CLUSTER_PORT STAMPEDE_CLUSTER_DIR=$OWN_CLUSTER_DIR \
                     bash scripts/services.sh cluster-start); then
    echo "run.sh: the run's cluster on $OWN_CLUSTER_PORT.. did not start (set LOAD_CLUSTER_PORT)" >&2
    exit 2
  fi
  eval "$cluster_env"
  REDIS_URL=$REDIS_CLUSTER_URL
  echo "run.sh: Redis Cluster of the run: $REDIS_URL, dir $OWN_CLUSTER_DIR" >&2
elif [[ -z $USER_REDIS_URL ]]; then
  # The run's own redis-server: AOF with fsync before every reply (an
  # acknowledged write survives the faults scenario's SIGKILL), as the
  # private one of services.sh.
  if redis-cli -p "$OWN_REDIS_PORT" ping >/dev/null 2>&1; then
    echo "run.sh: something already listens on 127.0.0.1:$OWN_REDIS_PORT (set LOAD_REDIS_PORT, or REDIS_URL to use it)" >&2
    exit 2
  fi
  OWN_REDIS_DIR=$OUT_DIR/redis-$SCENARIO-$EPOCH
  mkdir -p "$OWN_REDIS_DIR"
  cat >"$OWN_REDIS_DIR/redis.conf" <<CONF
port $OWN_REDIS_PORT
bind 127.0.0.1
dir $OWN_REDIS_DIR
appendonly yes
appendfsync always
auto-aof-rewrite-min-size 512mb
latency-tracking no
save ""
daemonize yes
pidfile $OWN_REDIS_DIR/redis.pid
logfile $OWN_REDIS_DIR/redis.log
CONF
  redis-server "$OWN_REDIS_DIR/redis.conf"
  for _ in $(seq 1 100); do
    [[ $(redis-cli -p "$OWN_REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
    sleep 0.1
  done
  if [[ $(redis-cli -p "$OWN_REDIS_PORT" ping 2>/dev/null) != PONG ]]; then
    echo "run.sh: the run's redis-server did not start; see $OWN_REDIS_DIR/redis.log" >&2
    exit 2
  fi
  echo "run.sh: Redis of the run on 127.0.0.1:$OWN_REDIS_PORT (AOF always), dir $OWN_REDIS_DIR" >&2
elif [[ $SCENARIO == faults ]]; then
  echo "run.sh: faults: REDIS_URL was given: drop and flood run against it, kill is SKIPPED" >&2
fi
if [[ $SCENARIO == script-bench ]]; then
  # The scripts straight against the run's own Redis: no engine and
  # no Postgres. It resets that Redis's statistics, so never a given one.
  if [[ -z $OWN_REDIS_DIR ]]; then
    echo "run.sh: script-bench runs only on a Redis of its own (unset REDIS_URL, LOAD_REDIS=server)" >&2
    exit 2
  fi
  BENCH_JSON=$OUT_DIR/script-bench-$EPOCH.json
  set +e
  "$BIN/loadtest" script-bench --redis-url "$REDIS_URL" --json "$BENCH_JSON" --threads 1 "$@"
  rc=$?
  set -e
  echo "run.sh: JSON summary $BENCH_JSON" >&2
  exit "$rc"
fi

# The cost table's split by script: the slow log, only on our own Redis.
COST_FLAGS=()
if [[ -n $OWN_REDIS_DIR$OWN_CLUSTER_DIR && ${COST_SLOWLOG:-1} != 0 ]]; then COST_FLAGS=(--slowlog-sample); fi
# Redis's profile per measured phase: the engine's and the baseline's each
# their own file.
ENGINE_PERF=() BASELINE_PERF=()
if [[ ${REDIS_PERF:-0} == 1 ]]; then
  ENGINE_PERF=(--perf-redis "$OUT_DIR/perf-redis-engine-$SCENARIO-$EPOCH.data")
  BASELINE_PERF=(--perf-redis "$OUT_DIR/perf-redis-baseline-$SCENARIO-$EPOCH.data")
fi

psql "$ADMIN_URL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $LOAD_DB" >/dev/null
DB_CREATED=1

if [[ $SCENARIO == settlement ]]; then
  # Loaded before the engine starts, so the timed runs share the machine
  # with nothing else (gen-transactions migrates the database itself).
  DATABASE_URL=$LOAD_URL "$BIN/stampede" gen-transactions --count "$TXNS" --merchants 1000 \
    --from 2025-01-01 --to 2025-01-31 --seed 1 >&2
  if [[ $SMALL_TXNS != 0 ]]; then
    DATABASE_URL=$LOAD_URL "$BIN/stampede" gen-transactions --count "$SMALL_TXNS" --merchants 1000 \
      --from 2025-03-01 --to 2025-03-31 --seed 2 >&2
  fi
fi

echo "run.sh: engine on 127.0.0.1:$LOAD_PORT, database $LOAD_DB, key prefix $PREFIX, log $ENGINE_LOG" >&2
# Keys on: one key with every scope, made by the engine's own command; the
# driver reads it from STAMPEDE_API_KEY.
LOAD_KEYS_FILE=""
if [[ -n ${LOAD_KEYS:-} ]]; then
  LOAD_KEYS_FILE=$(mktemp)
  key_out=$("$BIN/stampede" keys new --name load --scopes sale,orders,wallet,ingest,read,metrics)
  sed -n 's/^line: //p' <<<"$key_out" >"$LOAD_KEYS_FILE"
  STAMPEDE_API_KEY=$(sed -n 's/^secret: //p' <<<"$key_out")
  export STAMPEDE_API_KEY
  echo "run.sh: keys on ($LOAD_KEYS_FILE)" >&2
fi
STAMPEDE_LISTEN=127.0.0.1:$LOAD_PORT \
  STAMPEDE_API_KEYS_FILE=$LOAD_KEYS_FILE \
  REDIS_URL=$REDIS_URL \
  DATABASE_URL=$LOAD_URL \
  STAMPEDE_KEY_PREFIX=$PREFIX \
  ITEMS_PER_SALE=$ITEMS \
  PER_USER_LIMIT=$LIMIT \
  SALE_PERIOD_SECS=3600 \
  STAMPEDE_ADMIN_TOKEN=$LOAD_ADMIN_TOKEN \
  RUST_LOG=${RUST_LOG:-warn} \
  "$BIN/stampede" serve >"$ENGINE_LOG" 2>&1 &
ENGINE_PID=$!
wait_healthy engine "$ENGINE_PID" "$LOAD_PORT" "$ENGINE_LOG" || exit 2

if [[ $SCENARIO == ingest ]]; then
  # $ENGINE_PID is the engine itself (bash execs a simple background command),
  # so the driver reads its memory from /proc.
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --database-url "$LOAD_URL"
    --engine-pid "$ENGINE_PID"
    --redis-url "$REDIS_URL"
    --file "$LARGE_FILE"
    --json "$JSON_OUT"
    --threads "${DRIVER_THREADS:-1}"
  )
  if [[ -n $SMALL_FILE ]]; then driver_args+=(--small-file "$SMALL_FILE"); fi
elif [[ $SCENARIO == orders ]]; then
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --admin-token "$LOAD_ADMIN_TOKEN"
    --products "${PRODUCTS:-20}" --stock "${STOCK:-5000}" --buyers "${BUYERS:-2000}"
    --database-url "$LOAD_URL"
    --operations "${OPERATIONS:-150000}" --connections "${CONNECTIONS:-200}"
    --server-pid "$ENGINE_PID" --redis-url "$REDIS_URL" "${COST_FLAGS[@]}" "${ENGINE_PERF[@]}"
    --json "$JSON_OUT"
    --threads "${DRIVER_THREADS:-1}"
  )
elif [[ $SCENARIO == wallet ]]; then
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --server-pid "$ENGINE_PID"
    --players "$PLAYERS" --sse-clients "$SSE_CLIENTS"
    --connections "$CONNECTIONS" --secs "$SECS"
    --database-url "$LOAD_URL"
    --redis-url "$REDIS_URL" "${COST_FLAGS[@]}" "${ENGINE_PERF[@]}"
    --json "$JSON_OUT"
    --threads "${DRIVER_THREADS:-1}"
  )
elif [[ $SCENARIO == faults ]]; then
  # $ENGINE_PID is the engine itself (see above): its Redis connections and memory.
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --admin-token "$LOAD_ADMIN_TOKEN"
    --redis-url "$REDIS_URL" --database-url "$LOAD_URL"
    --key-prefix "$PREFIX"
    --engine-pid "$ENGINE_PID"
    --json "$JSON_OUT"
    --threads "${DRIVER_THREADS:-1}"
  )
  if [[ -n $OWN_REDIS_DIR ]]; then
    driver_args+=(--redis-pidfile "$OWN_REDIS_DIR/redis.pid" --redis-conf "$OWN_REDIS_DIR/redis.conf")
  fi
elif [[ $SCENARIO == oha ]]; then
  OHA_RESULT=$OUT_DIR/oha-$OHA_RECIPE-$EPOCH.oha.json
  echo "run.sh: oha recipe $OHA_RECIPE, result $OHA_RESULT" >&2
  if ! BASE_URL="http://127.0.0.1:$LOAD_PORT" ADMIN_TOKEN="$LOAD_ADMIN_TOKEN" OHA_JSON="$OHA_RESULT" \
      WORK_DIR="$OUT_DIR" bash "$ROOT/loadtest/oha.sh" "$OHA_RECIPE"; then
    echo "run.sh: loadtest/oha.sh $OHA_RECIPE failed" >&2
    exit 2
  fi
  driver_args=(--recipe "$OHA_RECIPE" --result "$OHA_RESULT" --json "$JSON_OUT")
elif [[ $SCENARIO == settlement ]]; then
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --database-url "$LOAD_URL"
    --admin-token "$LOAD_ADMIN_TOKEN"
    --engine-pid "$ENGINE_PID"
    --from 2025-01-01 --to 2025-01-31
    --runs "$RUNS"
    --json "$JSON_OUT"
  )
  if [[ $SMALL_TXNS != 0 ]]; then driver_args+=(--small-from 2025-03-01 --small-to 2025-03-31); fi
else
  # $ENGINE_PID is the engine itself (see above): its CPU per request.
  driver_args=(
    --url "http://127.0.0.1:$LOAD_PORT"
    --server-pid "$ENGINE_PID"
    --users "$USERS" --items "$ITEMS" --limit "$LIMIT"
    --redis-url "$REDIS_URL" --database-url "$LOAD_URL"
    --key-prefix "$PREFIX" --lua-dir "$ROOT/lua"
    --json "$JSON_OUT"
    --threads "${DRIVER_THREADS:-1}"
  )
  case $SCENARIO in contest|sustained|contention) driver_args+=("${COST_FLAGS[@]}" "${ENGINE_PERF[@]}") ;; esac
fi

set +e
"$BIN/loadtest" "$SCENARIO" "${driver_args[@]}" "$@"
rc=$?
set -e
stop_engine

# The same scenario against the baseline server, once the engine is gone (it
# would compete for the CPUs), on keys of its own. The driver finds Redis and
# Postgres as for the engine (Postgres through DATABASE_URL: it checks nothing
# there) and skips the checks and the redis-benchmark baseline that only make
# sense for the engine.
if [[ -n $BASELINE_SERVER ]]; then
  baseline_server_args=(
    --listen "127.0.0.1:$BASELINE_PORT" --redis-url "$REDIS_URL"
    --prefix "$BASELINE_PREFIX" --items "$ITEMS" --limit "$LIMIT"
  )
  if [[ -n ${STAMPEDE_WORKER_THREADS:-} ]]; then baseline_server_args+=(--workers "$STAMPEDE_WORKER_THREADS"); fi
  if [[ -n ${STAMPEDE_REDIS_POOL:-} ]]; then baseline_server_args+=(--redis-pool "$STAMPEDE_REDIS_POOL"); fi
  echo "run.sh: baseline server on 127.0.0.1:$BASELINE_PORT, key prefix $BASELINE_PREFIX, log $BASELINE_LOG" >&2
  "$BIN/baseline-server" "${baseline_server_args[@]}" >"$BASELINE_LOG" 2>&1 &
  BASELINE_PID=$!
  if [[ $SCENARIO == wallet || $SCENARIO == orders ]] &&
     wait_healthy baseline-server "$BASELINE_PID" "$BASELINE_PORT" "$BASELINE_LOG"; then
    # Like for like: the baseline server under the engine run's connection
    # count, for as long as the engine's run lasted (at least 10 s: a 1 s
    # contest at 1000 connections swung 26k-42k requests/s between runs).
    baseline_secs=${SECS:-20}
    if [[ $SCENARIO == orders ]]; then
      baseline_secs=$(python3 -c 'import json,math,sys; print(max(10, math.ceil(json.load(open(sys.argv[1]))["elapsed_secs"])))' "$JSON_OUT" 2>/dev/null || echo 10)
    fi
    set +e
    "$BIN/loadtest" wallet --server baseline --url "http://127.0.0.1:$BASELINE_PORT" \
      --server-pid "$BASELINE_PID" --redis-url "$REDIS_URL" "${COST_FLAGS[@]}" "${BASELINE_PERF[@]}" \
      --connections "${CONNECTIONS:-200}" --secs "$baseline_secs" --engine-json "$JSON_OUT" \
      --json "$BASELINE_JSON" --threads "${DRIVER_THREADS:-1}"
    baseline_rc=$?
    set -e
  elif [[ $SCENARIO != wallet && $SCENARIO != orders ]] &&
       wait_healthy baseline-server "$BASELINE_PID" "$BASELINE_PORT" "$BASELINE_LOG"; then
    set +e
    baseline_scenario=$SCENARIO
    baseline_extra=("$@")
    "$BIN/loadtest" "$baseline_scenario" \
      --server baseline --server-pid "$BASELINE_PID" \
      --url "http://127.0.0.1:$BASELINE_PORT" \
      --users "$USERS" --items "$ITEMS" --limit "$LIMIT" \
      --redis-url "$REDIS_URL" --database-url "$DATABASE_URL" \
      --key-prefix "$BASELINE_PREFIX" \
      --json "$BASELINE_JSON" \
      --threads "${DRIVER_THREADS:-1}" \
      "${COST_FLAGS[@]}" "${BASELINE_PERF[@]}" \
      "${baseline_extra[@]}"
    baseline_rc=$?
    set -e
  else
    baseline_rc=2
  fi
  stop_baseline_server
  if (( baseline_rc > rc )); then rc=$baseline_rc; fi
  if [[ $SCENARIO == orders && -f $JSON_OUT && -f $BASELINE_JSON ]]; then
    # orders/s of the engine against requests/s of the baseline server.
    python3 - "$JSON_OUT" "$BASELINE_JSON" <<'PY'
import json, sys
engine_path, baseline_path = sys.argv[1], sys.argv[2]
engine = json.load(open(engine_path))
rps = json.load(open(baseline_path)).get("requests_per_sec")
engine["baseline_requests_per_sec"] = rps
engine["ratio_orders_to_baseline"] = engine["orders_per_sec"] / rps if rps else None
engine["baseline_server"] = json.load(open(baseline_path))
json.dump(engine, open(engine_path, "w"), indent=2)
ratio = engine["ratio_orders_to_baseline"]
print(f"orders: {engine['orders_per_sec']:.0f} orders/s (p50 {engine['orders_p50_ms']:.2f} ms, "
      f"p99 {engine['orders_p99_ms']:.2f} ms); baseline server {rps:.0f} requests/s; "
      f"ratio {ratio:.2f}" if ratio else "orders: no baseline figure")
PY
  elif [[ $SCENARIO == wallet && -f $JSON_OUT && -f $BASELINE_JSON ]]; then
    # The baseline server's run (its cost table included) in the run's summary.
    python3 - "$JSON_OUT" "$BASELINE_JSON" <<'PY'
import json, sys
engine = json.load(open(sys.argv[1]))
engine["baseline_server"] = json.load(open(sys.argv[2]))
json.dump(engine, open(sys.argv[1], "w"), indent=2)
PY
  elif [[ $SCENARIO != wallet && -f $JSON_OUT && -f $BASELINE_JSON ]]; then
    # Exit code 1 only says an invariant failed, which rc already tells.
    "$BIN/loadtest" compare --engine "$JSON_OUT" --baseline "$BASELINE_JSON" --json "$JSON_OUT" \
      || [[ $? == 1 ]] || echo "run.sh: loadtest compare failed" >&2
  fi
fi

if [[ -f $JSON_OUT ]]; then
  echo "run.sh: JSON summary $JSON_OUT, engine log $ENGINE_LOG" >&2
  if [[ -n ${RUN_JSON_PATH_FILE:-} ]]; then echo "$JSON_OUT" >"$RUN_JSON_PATH_FILE"; fi
else
  echo "run.sh: engine log $ENGINE_LOG" >&2
fi
if [[ -n $BASELINE_SERVER ]]; then
  echo "run.sh: baseline server's own summary $BASELINE_JSON, log $BASELINE_LOG" >&2
fi
exit "$rc"
