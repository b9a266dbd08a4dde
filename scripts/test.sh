#!/usr/bin/env bash
# The one command that runs the checks: private services, rustfmt, clippy, all tests (the API
# suite twice: on a standalone Redis, then on a Redis Cluster).
#   bash scripts/test.sh
# Exits non-zero if any step fails (all steps run, so one report shows every failure).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Was Postgres provided from outside? Then the tests' pg-stop/pg-start do not touch it.
PRIVATE_PG=1
if [ -n "${DATABASE_URL:-}" ]; then PRIVATE_PG=0; fi

envs=$(bash "$ROOT/scripts/services.sh")
eval "$envs"
STAMPEDE_TEST_TOOLS_NO_OHA=1 bash "$ROOT/scripts/services.sh" test-tools
# oha is built from source once (minutes of CPU on a fresh clone). It builds
# at the lowest priority beside the steps below, which leave the CPU idle
# for long stretches while their tests wait on servers; the oha step waits
# for it.
mkdir -p "$ROOT/.data"
OHA_LOG=$ROOT/.data/oha-install.log
nice -n 19 bash "$ROOT/scripts/services.sh" oha >"$OHA_LOG" 2>&1 &
OHA_PID=$!
export REDIS_URL DATABASE_URL
export STAMPEDE_TEST_SERVICES="$ROOT/scripts/services.sh"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

# The API suite runs a second time on a Redis Cluster: REDIS_CLUSTER_URL if
# given from outside (left alone, like REDIS_URL), else a private 3-primary
# cluster on STAMPEDE_SUITE_CLUSTER_PORT.. (default 7311; bus ports +10000),
# stopped at the end. Exported for both passes: the cluster tests of the
# first pass use it too.
PRIVATE_CLUSTER=0
SUITE_CLUSTER_PORT=${STAMPEDE_SUITE_CLUSTER_PORT:-7311}
if [ -z "${REDIS_CLUSTER_URL:-}" ]; then
    cluster_envs=$(STAMPEDE_CLUSTER_PORT=$SUITE_CLUSTER_PORT bash "$ROOT/scripts/services.sh" cluster-start)
    eval "$cluster_envs"
    PRIVATE_CLUSTER=1
fi
export REDIS_CLUSTER_URL

# A test that simulates a Postgres outage may fail half-way: leave Postgres running afterwards.
restore_pg() {
    if [ "$PRIVATE_PG" -eq 1 ]; then
        bash "$ROOT/scripts/services.sh" pg-start >/dev/null 2>&1 ||
            echo "[test] warning: could not restart the private postgres" >&2
    fi
}
on_exit() {
    restore_pg
    if [ "$PRIVATE_CLUSTER" -eq 1 ]; then
        STAMPEDE_CLUSTER_PORT=$SUITE_CLUSTER_PORT bash "$ROOT/scripts/services.sh" cluster-stop >/dev/null 2>&1 ||
            echo "[test] warning: could not stop the private cluster" >&2
    fi
}
trap on_exit EXIT

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "[test] ERROR: cargo not found; install Rust 1.95 from https://rustup.rs" >&2
    exit 1
}
for comp in fmt clippy; do
    if ! cargo "$comp" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            name=$comp
            [ "$comp" = fmt ] && name=rustfmt
            echo "[test] installing rustup component $name" >&2
            rustup component add "$name" >&2
        else
            echo "[test] ERROR: cargo $comp is not installed" >&2
            exit 1
        fi
    fi
done

failed=()
timings=()
step() {
    local name=$1 started=$SECONDS took
    shift
    echo "[test] ==> $*" >&2
    if "$@"; then
        took=$((SECONDS - started))
        echo "[test] ok: $name (${took} s)" >&2
    else
        took=$((SECONDS - started))
        echo "[test] FAILED: $name (${took} s)" >&2
        failed+=("$name")
    fi
    timings+=("$(printf '%-12s %5d s' "$name" "$took")")
}
oha_ready() {
    if wait "$OHA_PID"; then
        return 0
    fi
    echo "[test] building oha failed; its log ($OHA_LOG):" >&2
    tail -n 40 "$OHA_LOG" >&2
    return 1
}

step fmt cargo fmt --all -- --check
# clippy with the test profile: the proc macros and build scripts it must
# build are then the very ones the test step links (another profile would
# build them twice, minutes on a fresh clone).
step clippy cargo clippy --workspace --all-targets --profile test -- -D warnings
step test cargo test --workspace --all-targets
# The API suite again with the engine on the Redis Cluster. Skipped there,
# by name, only tests whose subject is a private standalone redis-server
# they start, kill, pause or misconfigure themselves (REDIS_URL plays no
# part in them, so the cluster pass would repeat the first pass exactly),
# and the tests that start a private cluster of their own either way. Everything else, the kill -9 tests of the engine included, runs on
# the cluster.
CLUSTER_SKIP=(
    at_most_once::a_call_whose_reply_is_lost_is_never_run_twice                  # a TCP proxy before a private Redis
    batching::a_batch_of_mixed_requests_gives_each_its_solo_outcome              # CLIENT PAUSE on a private Redis
    leaks::with_redis_away_streams_end_after_bounded_retries_and_free_their_slot # kills and restarts a private Redis
    overload::requests_that_waited_past_the_deadline_are_shed_before_redis       # CLIENT PAUSE on a private Redis
    redis_checks::                    # each starts a misconfigured private Redis (eviction, no AOF, no CONFIG)
    faults::dropped_connections::     # CLIENT KILL on a private Redis
    faults::eviction_policy::         # an evicting private Redis
    faults::flood::                   # a private Redis, to measure the engine's memory alone
    faults::latency::                 # a slowed proxy before a private Redis
    faults::redis_kill::              # kill -9 and restart of a private Redis
    cluster::after_a_slot_moves_calls_land_without_an_error                      # its own private cluster
    cluster::during_a_slot_migration_calls_fail_unrun_and_the_engine_serves_on   # its own private cluster
    scale_out::acknowledged_writes_survive_a_primary_failover           # its own private cluster, with replicas
    split_balance::   # each starts its own private cluster, to read its primaries' command statistics (and drop their connections)
)
cluster_suite() {
    local skip=() name
    for name in "${CLUSTER_SKIP[@]}"; do skip+=(--skip "$name"); done
    echo "[test] API suite on the cluster $REDIS_CLUSTER_URL (${#CLUSTER_SKIP[@]} skipped by name)" >&2
    # --workspace as in the test step: the same features, so its API test
    # binary runs again instead of being built a second time.
    REDIS_URL=$REDIS_CLUSTER_URL cargo test --workspace --test api -- "${skip[@]}"
}
step test-cluster cluster_suite
step fuzz bash scripts/fuzz.sh
# A short load run whose invariants gate the test command: the contest on
# the debug build `cargo test` just made (no second, release build), 300
# users buying 3,000 items at once against a fresh engine, database and key
# prefix, with keys on (the driver sends a service key); no baseline
# server, no redis-benchmark. --strict: a check that
# could not run fails the step instead of passing it silently.
step loadtest env LOADTEST_PROFILE=dev NO_BASELINE_SERVER=1 USERS=300 ITEMS=3000 LOAD_KEYS=1 \
    LOAD_PORT="${LOADTEST_PORT:-18180}" bash loadtest/run.sh contest --no-baseline --strict
# The checkout recipe of loadtest/oha.sh (oha, installed by services.sh
# test-tools) for 3 s against a fresh debug engine; `loadtest oha` then
# wants no error, a rate above zero and only 200s in oha's JSON result.
step oha-build oha_ready
step oha env LOADTEST_PROFILE=dev OHA_RECIPE=checkout SECS=3 CONNECTIONS=20 LOAD_KEYS=1 \
    LOAD_PORT="${LOADTEST_PORT:-18180}" bash loadtest/run.sh oha --strict
# The k6 scripts are for users with k6 (no package of it here): at least
# they must parse, as the ES modules they are.
k6_syntax() {
    local f rc=0
    for f in loadtest/k6/*.js; do
        node --input-type=module --check <"$f" || {
            echo "[test] $f does not parse" >&2
            rc=1
        }
    done
    return "$rc"
}
step k6-syntax k6_syntax

echo "[test] time per step (total ${SECONDS} s, services and tools included):" >&2
printf '[test]   %s\n' "${timings[@]}" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[test] FAILED steps: ${failed[*]}" >&2
    exit 1
fi
echo "[test] all checks passed" >&2
