#!/usr/bin/env bash
# Fuzzes a live engine with schemathesis against its own /openapi.json: a
# fixed seed and a bounded number of examples per operation. It passes when
# no response is a 5xx and every response conforms to the document (status,
# content type, schema, headers). Run by scripts/test.sh.
#   bash scripts/fuzz.sh            (REDIS_URL/DATABASE_URL from services.sh)
# Environment: FUZZ_EXAMPLES (30), FUZZ_SEED (1), FUZZ_PORT (18090).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
: "${REDIS_URL:?REDIS_URL must be set (eval \"\$(bash scripts/services.sh)\")}"
: "${DATABASE_URL:?DATABASE_URL must be set}"
SCHEMATHESIS=$ROOT/.data/venv/bin/schemathesis
[ -x "$SCHEMATHESIS" ] || bash "$ROOT/scripts/services.sh" test-tools
EXAMPLES=${FUZZ_EXAMPLES:-30}
SEED=${FUZZ_SEED:-1}
PORT=${FUZZ_PORT:-18090}
TOKEN=fuzz-admin-token-$(date +%s%N)
NAME=fuzz$(date +%s)
KEYS=$ROOT/.data/fuzz-keys.txt
AUTH_CONFIG=$ROOT/.data/fuzz-schemathesis.toml

# The very build the test step makes (a no-op after it): a plain `cargo
# build` resolves the dependencies' features without the tests' and would
# compile them all again.
cargo test --workspace --all-targets --no-run >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/stampede

server=${DATABASE_URL%%\?*}
server=${server%/*}
psql "$server/postgres" -qX -c "CREATE DATABASE $NAME" >/dev/null
ENGINE_PID=""
cleanup() {
    [ -n "$ENGINE_PID" ] && kill "$ENGINE_PID" 2>/dev/null && wait "$ENGINE_PID" 2>/dev/null
    psql "$server/postgres" -qX -c "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$NAME:*" 2>/dev/null | xargs -r -n 500 redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Keys on, as in production: one key with every scope, the admin token, and
# a player-token secret. schemathesis sends each operation the credential
# of the scheme its `security` names, and checks (`ignored_auth`) that an
# operation refuses a request without it.
mkdir -p "$ROOT/.data"
key_out=$("$BIN" keys new --name fuzz --scopes sale,orders,wallet,ingest,read)
FUZZ_KEY=$(sed -n 's/^secret: //p' <<<"$key_out")
(umask 077 && sed -n 's/^line: //p' <<<"$key_out" >"$KEYS")
cat >"$AUTH_CONFIG" <<'TOML'
[auth.openapi.key]
bearer = "${FUZZ_KEY}"

[auth.openapi.admin]
bearer = "${FUZZ_ADMIN_TOKEN}"
TOML
export FUZZ_KEY FUZZ_ADMIN_TOKEN=$TOKEN

LOG=$ROOT/.data/fuzz-engine.log
STAMPEDE_LISTEN=127.0.0.1:$PORT DATABASE_URL=$server/$NAME STAMPEDE_KEY_PREFIX=$NAME \
    STAMPEDE_CONSUMER=$NAME STAMPEDE_ADMIN_TOKEN=$TOKEN STAMPEDE_API_KEYS_FILE=$KEYS \
    STAMPEDE_PLAYER_TOKEN_SECRET=fuzz-player-secret-$(date +%s%N)-0123456789 RUST_LOG=warn "$BIN" serve >"$LOG" 2>&1 &
ENGINE_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.2
done

"$SCHEMATHESIS" --config-file "$AUTH_CONFIG" run "http://127.0.0.1:$PORT/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,ignored_auth \
    --max-examples "$EXAMPLES" --seed "$SEED" \
    --no-color
