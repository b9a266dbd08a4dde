// k6 run loadtest/k6/sustained.js           (BASE_URL defaults to http://localhost:8080)
// k6 run -e USERS=20000 -e ITEMS=200000 -e VUS=1000 loadtest/k6/sustained.js
//
// "Sustained" scenario, as `loadtest/run.sh sustained`: USERS users (20000) buy ITEMS items
// (200000, so ITEMS/USERS = 10 each, at most PER_USER_LIMIT) over VUS connections (1000) that
// take users in turn: checkout then purchase, item after item, until every item is sold. It
// measures throughput rather than an opening burst. The engine must be started with
// ITEMS_PER_SALE >= ITEMS, on a fresh sale.
import http from './key.js';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const USERS = parseInt(__ENV.USERS || '20000', 10);
const ITEMS = parseInt(__ENV.ITEMS || '200000', 10);
const VUS = parseInt(__ENV.VUS || '1000', 10);
const PER_USER = Math.floor(ITEMS / USERS);

const purchasesOk = new Counter('purchases_ok');

export const options = {
  scenarios: {
    sustained: {
      executor: 'shared-iterations',
      vus: VUS,
      iterations: USERS, // one iteration is one user buying its PER_USER items
      maxDuration: '30m',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    purchases_ok: [`count==${USERS * PER_USER}`],
  },
};

export default function () {
  // The scenario-wide iteration number: users 0 .. USERS-1, each once,
  // whichever VU runs them.
  const user = exec.scenario.iterationInTest;
  for (let k = 1; k <= PER_USER; k++) {
    const item = user * PER_USER + k;
    const checkout = http.post(`${BASE_URL}/checkout?user_id=sus-${user}&id=${item}`, null, {
      tags: { endpoint: 'checkout' },
    });
    const code = checkout.status === 200 ? checkout.json('code') : null;
    if (!check(checkout, { 'checkout 200': (r) => r.status === 200 }) || !code) continue;
    const purchase = http.post(`${BASE_URL}/purchase?code=${code}`, null, { tags: { endpoint: 'purchase' } });
    if (check(purchase, { 'purchase 200': (r) => r.status === 200 })) purchasesOk.add(1);
  }
}
