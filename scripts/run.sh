#!/usr/bin/env bash
# The one command that runs the engine: private Redis + Postgres, then `stampede serve`.
#   bash scripts/run.sh
# Honours REDIS_URL / DATABASE_URL (external services) and every STAMPEDE_* variable
# (see README.md). Listens on 127.0.0.1:8080 and 127.0.0.1:8032 unless STAMPEDE_LISTEN is set:
# on loopback, without STAMPEDE_API_KEYS_FILE, the engine serves openly (open mode, README.md
# "Access"); to listen beyond loopback, give it keys (`stampede keys new`).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

# Assign first, then eval: `eval "$(...)"` alone would hide a failure of services.sh.
envs=$(bash "$ROOT/scripts/services.sh")
eval "$envs"
export REDIS_URL DATABASE_URL

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "[run] ERROR: cargo not found. Install Rust 1.95 (https://rustup.rs):" >&2
    echo "[run]   curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain 1.95" >&2
    echo "[run] then open a new shell (or '. \$HOME/.cargo/env') and rerun $0" >&2
    exit 1
fi

export STAMPEDE_LISTEN=${STAMPEDE_LISTEN:-127.0.0.1:8080,127.0.0.1:8032}
# A flash sale opens thousands of connections at once.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Admin routes (catalogue, bonuses, jobs, reconcile) need a bearer token. A
# development token is made once and kept under the git-ignored .data/, so it
# survives restarts; set STAMPEDE_ADMIN_TOKEN to use your own.
if [ -z "${STAMPEDE_ADMIN_TOKEN:-}" ]; then
    token_file="$ROOT/.data/admin-token"
    if [ ! -s "$token_file" ]; then
        mkdir -p "$ROOT/.data"
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$token_file")
    fi
    STAMPEDE_ADMIN_TOKEN=$(cat "$token_file")
    export STAMPEDE_ADMIN_TOKEN
    echo "[run] development admin token (from $token_file): $STAMPEDE_ADMIN_TOKEN" >&2
fi

echo "[run] REDIS_URL=$REDIS_URL DATABASE_URL=$DATABASE_URL STAMPEDE_LISTEN=$STAMPEDE_LISTEN" >&2
exec cargo run --release --bin stampede -- serve "$@"
