#!/usr/bin/env bash
# oha recipes: the engine's endpoints worth hammering, one command each (see
# loadtest/README.md, "oha"). Against a running engine on a fresh sale:
#
#   loadtest/oha.sh checkout|purchase|orders|wallet [extra oha flags]
#
# Settings chosen to compare with the k6 scripts (loadtest/k6/): -c is k6's
# VUS (one keep-alive connection each, one request at a time), -z its
# duration, and method, body and headers are the ones k6 sends.
#
# Environment (optional):
#   BASE_URL      the engine (http://127.0.0.1:8080)
#   SECS          how long, oha -z (checkout, orders, wallet: 10; k6's orders and wallet run 30)
#   CONNECTIONS   oha -c (checkout, purchase: 1000 like k6's contest; orders, wallet: 200 like k6's)
#   CODES         purchase: checkout codes issued first, one per user and item (4000); oha then
#                 sends CODES / 4 purchases, each with a code drawn at random (see below)
#   ADMIN_TOKEN   orders: creates the product ordered ($STAMPEDE_ADMIN_TOKEN)
#   STAMPEDE_API_KEY  a service key (`stampede keys new`) with the recipe's scope: sent
#                 with every request, the setup's included, when the engine checks keys
#   OHA           the oha binary (oha on PATH, else .data/tools/bin/oha, which
#                 `scripts/services.sh test-tools` installs)
#   OHA_JSON      write oha's JSON result (--output-format json) to this file
#                 instead of printing its text report
#   WORK_DIR      where the generated body files go (.data/loadtest)
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
RECIPE=${1:-}
shift || true
BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
BASE_URL=${BASE_URL%/}
WORK_DIR=${WORK_DIR:-$ROOT/.data/loadtest}
mkdir -p "$WORK_DIR"
RUN=$(date +%s%N)

if [[ -z ${OHA:-} ]]; then
  OHA=$(command -v oha || echo "$ROOT/.data/tools/bin/oha")
fi
if [[ ! -x $OHA ]]; then
  echo "oha.sh: oha not found (bash scripts/services.sh test-tools installs it into .data/tools)" >&2
  exit 2
fi
output=(--no-tui)
if [[ -n ${OHA_JSON:-} ]]; then output+=(--output-format json -o "$OHA_JSON"); fi
# The key goes in a header file for curl's setup requests (kept off its
# command line, where `ps` would show it) and as a header to oha.
key_header=()
curl_key=()
if [[ -n ${STAMPEDE_API_KEY:-} ]]; then
  key_header=(-H "Authorization: Bearer $STAMPEDE_API_KEY")
  key_file=$WORK_DIR/oha-key-$RUN.header
  (umask 077 && printf 'Authorization: Bearer %s\n' "$STAMPEDE_API_KEY" >"$key_file")
  trap 'rm -f "$key_file"' EXIT
  curl_key=(-H "@$key_file")
fi
output+=(${key_header[@]+"${key_header[@]}"})
extra=("$@")

# POSTs bodies drawn at random from the JSON lines of file $1 to path $2,
# with the run's length and connections as the remaining arguments (and the
# caller's extra flags last), then removes the file; oha's status is the
# script's.
post_bodies() {
  local bodies=$1 path=$2 status=0
  shift 2
  "$OHA" "${output[@]}" "$@" -m POST -T application/json -Z "$bodies" "$BASE_URL$path" \
    ${extra[@]+"${extra[@]}"} || status=$?
  rm -f "$bodies"
  exit "$status"
}

case "$RECIPE" in
  checkout)
    # Every request its own user (12 random digits) and a random item of
    # 1..9999 (the default sale has 10,000): nobody competes, nothing is
    # sold, each answer is a fresh code. `\?`: in the regex `?` would make
    # the `t` before it optional.
    "$OHA" "${output[@]}" -z "${SECS:-10}s" -c "${CONNECTIONS:-1000}" -m POST \
      --rand-regex-url "$BASE_URL/checkout\\?user_id=oha[0-9]{12}&id=[1-9][0-9]{0,3}" "$@"
    ;;
  purchase)
    # Codes issued first by one curl process over one keep-alive connection
    # (user oha-<run>-<n> checks out item n), then spent with
    # POST /purchase {"checkout_code": ...}. oha picks each body at random
    # from the file, with replacement: sending CODES / 4 purchases spends
    # about 88% of them once; the rest find their code spent and are
    # answered 409 CODE_USED (a cheap refusal, what a retried purchase gets).
    codes=${CODES:-4000}
    config=$WORK_DIR/oha-checkouts-$RUN.curl
    bodies=$WORK_DIR/oha-purchases-$RUN.jsonl
    for ((n = 1; n <= codes; n++)); do
      printf 'url = "%s/checkout?user_id=oha-%s-%d&id=%d"\n' "$BASE_URL" "$RUN" "$n" "$n"
    done >"$config"
    curl -sS -X POST ${curl_key[@]+"${curl_key[@]}"} -K "$config" -w '\n' | sed -n 's/.*"code":"\([^"]*\)".*/{"checkout_code":"\1"}/p' >"$bodies"
    rm -f "$config"
    got=$(wc -l <"$bodies")
    if ((got < codes)); then
      echo "oha.sh: only $got of $codes checkouts answered with a code (a fresh sale with >= $codes items?)" >&2
      exit 2
    fi
    post_bodies "$bodies" /purchase -n "$((codes / 4))" -c "${CONNECTIONS:-1000}"
    ;;
  orders)
    # One product with stock for any run (10^8, the bound is 10^9), then
    # orders of 1 by buyers drawn from 1000; no Idempotency-Key, as in
    # k6's plain orders: every request is an order of its own.
    token=${ADMIN_TOKEN:-${STAMPEDE_ADMIN_TOKEN:-}}
    if [[ -z $token ]]; then
      echo "oha.sh: orders needs ADMIN_TOKEN (or STAMPEDE_ADMIN_TOKEN) to create its product" >&2
      exit 2
    fi
    product=$(curl -sS -X POST "$BASE_URL/products" -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' \
      -d "{\"name\":\"oha-$RUN\",\"stock\":100000000,\"price_cents\":1999,\"merchant_id\":1}" |
      sed -n 's/^{"id":\([0-9]*\).*/\1/p')
    if [[ -z $product ]]; then
      echo "oha.sh: POST /products did not answer with a product id" >&2
      exit 2
    fi
    bodies=$WORK_DIR/oha-orders-$RUN.jsonl
    for ((b = 0; b < 1000; b++)); do
      printf '{"product_id":%d,"quantity":1,"buyer_id":"oha-%d"}\n' "$product" "$b"
    done >"$bodies"
    post_bodies "$bodies" /orders -z "${SECS:-10}s" -c "${CONNECTIONS:-200}"
    ;;
  wallet)
    # Deposits of 100 to 1000 players, 100,000 distinct references. oha
    # draws each body at random, so a reference comes round again now and
    # then: the engine answers it 200 with the first answer
    # (Idempotent-Replayed), which is what a client retry gets.
    bodies=$WORK_DIR/oha-wallet-$RUN.jsonl
    awk -v run="$RUN" 'BEGIN {
      for (n = 0; n < 100000; n++)
        printf "{\"player_id\":\"oha-%d\",\"currency\":\"EUR\",\"type\":\"deposit\",\"amount_minor\":100,\"reference_id\":\"oha-%s-%d\"}\n", n % 1000, run, n
    }' >"$bodies"
    post_bodies "$bodies" /wallet/transactions -z "${SECS:-10}s" -c "${CONNECTIONS:-200}"
    ;;
  *)
    echo "usage: loadtest/oha.sh checkout|purchase|orders|wallet [extra oha flags]" >&2
    exit 2
    ;;
esac
