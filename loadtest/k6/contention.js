// k6 run loadtest/k6/contention.js         (BASE_URL defaults to http://localhost:8080)
//
// "Contention" scenario: 500 distinct users start at the same instant and all race for the
// same 20 items (1..20): each user tries to check out and buy every one of them, in the same
// order, so every item is fought over by all users at once.
//
// Allowed answers are only 200 (won), 409 (ITEM_SOLD / CODE_USED: lost the race) and
// 403 (USER_LIMIT_REACHED). The thresholds also verify no overselling: at most one
// successful purchase per item, and at most 20 in total.
import http from './key.js';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const VUS = parseInt(__ENV.VUS || '500', 10);
const ITEMS = 20;
const PER_USER_LIMIT = parseInt(__ENV.PER_USER_LIMIT || '10', 10);
const USER_PREFIX = __ENV.USER_PREFIX || 'contender-';
const ALLOWED = [200, 409, 403];

const purchasesOk = new Counter('purchases_ok');
const unexpected = new Counter('unexpected_status');

const thresholds = {
  checks: ['rate==1'],
  unexpected_status: ['count==0'],
  http_req_failed: ['rate==0'], // 403/409 are declared expected below
  http_req_duration: ['p(99)<100'],
  purchases_ok: [`count<=${ITEMS}`],
};
for (let item = 1; item <= ITEMS; item++) {
  thresholds[`purchases_ok{item:${item}}`] = ['count<=1']; // never sold twice
}

export const options = {
  scenarios: {
    contention: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: '5m',
    },
  },
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

// 409 and 403 are normal outcomes of the race, not failed requests.
http.setResponseCallback(http.expectedStatuses(...ALLOWED));

function jsonField(res, field) {
  try {
    return res.json(field);
  } catch (e) {
    return undefined;
  }
}

function checkStatus(res, what) {
  const ok = check(res, {
    [`${what} status is 200/409/403`]: (r) => ALLOWED.includes(r.status),
  });
  if (!ok) {
    unexpected.add(1, { endpoint: what, status: String(res.status) });
    console.error(`${what}: unexpected ${res.status} ${res.body}`);
  }
  return ok;
}

export default function () {
  const user = `${USER_PREFIX}${__VU - 1}`;
  let bought = 0;
  for (let item = 1; item <= ITEMS; item++) {
    const co = http.post(
      `${BASE_URL}/checkout?user_id=${encodeURIComponent(user)}&id=${item}`,
      null,
      { tags: { name: 'POST /checkout', endpoint: 'checkout' } },
    );
    checkStatus(co, 'checkout');
    if (co.status === 403) {
      break; // this user reached its limit
    }
    if (co.status !== 200) {
      continue; // lost the race for this item
    }
    const code = jsonField(co, 'code');
    check(co, { 'checkout returns a code': () => typeof code === 'string' && code.length > 0 });
    if (!code) {
      continue;
    }
    const pu = http.post(
      `${BASE_URL}/purchase?code=${encodeURIComponent(code)}`,
      null,
      { tags: { name: 'POST /purchase', endpoint: 'purchase' } },
    );
    checkStatus(pu, 'purchase');
    if (pu.status === 200) {
      check(pu, { 'purchase status is success': (r) => jsonField(r, 'status') === 'success' });
      purchasesOk.add(1, { item: String(item) });
      bought++;
    } else if (pu.status === 403) {
      break;
    }
  }
  check(bought, { 'user stays within the per-user limit': (b) => b <= PER_USER_LIMIT });
}
