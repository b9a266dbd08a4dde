// k6 run loadtest/k6/wallet.js            (BASE_URL defaults to http://localhost:8080)
// k6 run -e BASE_URL=http://host:8080 -e PLAYERS=2000 -e SSE_CLIENTS=1000 loadtest/k6/wallet.js
//
// "Wallet" scenario: every player is seeded with a deposit, then VUs bet, win (2 in 5 bets) and
// refund (1 in 10) in turn, sending one request in 5 twice with the same reference (the second
// must be a replay: same body, `Idempotent-Replayed: true`). Meanwhile SSE_CLIENTS VUs hold an
// event stream open each (k6 has no SSE client: a GET with a long timeout keeps the connection,
// which is what loads the engine; event delivery latency is measured by loadtest/run.sh wallet).
// At the end, every player's balance must be non-negative.
import http from './key.js';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const PLAYERS = parseInt(__ENV.PLAYERS || '2000', 10);
const SSE_CLIENTS = parseInt(__ENV.SSE_CLIENTS || '1000', 10);
const VUS = parseInt(__ENV.VUS || '200', 10);
const DURATION = __ENV.DURATION || '30s';
const RUN = __ENV.RUN || `${Date.now()}`;

const replays = new Counter('replays_ok');
const JSON_HEADERS = { headers: { 'Content-Type': 'application/json' } };

export const options = {
  scenarios: {
    listeners: {
      executor: 'per-vu-iterations', vus: SSE_CLIENTS, iterations: 1,
      exec: 'listen', maxDuration: '10m',
    },
    players: {
      executor: 'constant-vus', vus: VUS, duration: DURATION,
      exec: 'play', startTime: '5s',
    },
  },
  thresholds: {
    'http_req_duration{endpoint:transaction}': ['p(99)<100'],
    'checks{kind:transaction}': ['rate==1'],
  },
};

const player = (p) => `k6-${RUN}-${p}`;

function tx(body) {
  return http.post(`${BASE_URL}/wallet/transactions`, JSON.stringify(body),
    Object.assign({ tags: { endpoint: 'transaction' } }, JSON_HEADERS));
}

export function setup() {
  for (let p = 0; p < PLAYERS; p++) {
    tx({ player_id: player(p), currency: 'EUR', type: 'deposit', amount_minor: 1000000, reference_id: `seed-${player(p)}` });
  }
}

export function listen() {
  const p = (__VU - 1) % PLAYERS;
  http.get(`${BASE_URL}/wallet/${player(p)}/events`, { timeout: '60s', tags: { endpoint: 'events' } });
}

let n = 0;
export function play() {
  n += 1;
  const p = (__VU * 7919 + n) % PLAYERS;
  const amount = 10 + (n % 50);
  const bet = `b${__VU}-${n}`;
  const steps = [{ player_id: player(p), currency: 'EUR', type: 'bet', amount_minor: amount,
                   reference_id: bet, game: ['slots', 'table', 'live'][n % 3] }];
  if (n % 10 < 4) {
    steps.push({ player_id: player(p), currency: 'EUR', type: 'win', amount_minor: amount * 2,
                 reference_id: `w${__VU}-${n}`, bet_reference_id: bet });
  } else if (n % 10 === 4) {
    steps.push({ player_id: player(p), currency: 'EUR', type: 'refund', amount_minor: amount,
                 reference_id: `r${__VU}-${n}`, bet_reference_id: bet });
  }
  for (const step of steps) {
    const first = tx(step);
    check(first, { 'transaction 200': (r) => r.status === 200 }, { kind: 'transaction' });
    if (n % 5 === 0) {
      const again = tx(step);
      const ok = check(again, {
        'replay has the same body': (r) => r.status === 200 && r.body === first.body,
        'replay is marked': (r) => r.headers['Idempotent-Replayed'] === 'true',
      }, { kind: 'transaction' });
      if (ok) replays.add(1);
    }
  }
}

export function teardown() {
  for (let p = 0; p < PLAYERS; p += 97) {
    const r = http.get(`${BASE_URL}/wallet/${player(p)}?currency=EUR`);
    check(r, { 'balance is non-negative': (res) => res.status === 200 && res.json('cash_minor') >= 0 });
  }
}
