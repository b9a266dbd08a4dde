// k6 run loadtest/k6/contest.js            (BASE_URL defaults to http://localhost:8080)
// k6 run -e BASE_URL=http://host:8032 loadtest/k6/contest.js
//
// "Contest" scenario: 1000 users arrive at the same instant; user u (0-based) checks out and
// buys its own 10 items u*10+1 .. u*10+10, so 1000 x 10 = 10000 items (a whole sale with the
// default ITEMS_PER_SALE=10000, PER_USER_LIMIT=10) are sold with no contention between users.
// Every request must succeed and p99 latency must stay under 100 ms.
//
// Run it against a fresh sale (new sale period, or an engine with a fresh STAMPEDE_KEY_PREFIX):
// items already sold by an earlier run fail the checks.
import http from './key.js';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const VUS = parseInt(__ENV.VUS || '1000', 10);
const ITEMS_PER_USER = parseInt(__ENV.ITEMS_PER_USER || '10', 10);
const USER_PREFIX = __ENV.USER_PREFIX || 'user-';

const purchasesOk = new Counter('purchases_ok');
const checkoutsOk = new Counter('checkouts_ok');

export const options = {
  scenarios: {
    contest: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1, // each VU is one user buying its 10 items
      maxDuration: '5m',
    },
  },
  thresholds: {
    http_req_duration: ['p(99)<100'],
    'http_req_duration{endpoint:checkout}': ['p(99)<100'],
    'http_req_duration{endpoint:purchase}': ['p(99)<100'],
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    checkouts_ok: [`count==${VUS * ITEMS_PER_USER}`],
    purchases_ok: [`count==${VUS * ITEMS_PER_USER}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

function jsonField(res, field) {
  try {
    return res.json(field);
  } catch (e) {
    return undefined;
  }
}

export function setup() {
  const res = http.get(`${BASE_URL}/sales/current`, { tags: { name: 'GET /sales/current', endpoint: 'sales' } });
  if (res.status !== 200) {
    fail(`GET ${BASE_URL}/sales/current returned ${res.status}: is the engine running?`);
  }
  const sale = res.json();
  console.log(`sale ${sale.sale_id}: ${sale.items_sold}/${sale.items_total} sold, per-user limit ${sale.per_user_limit}`);
  if (sale.items_total < VUS * ITEMS_PER_USER) {
    console.warn(`the sale has ${sale.items_total} items but this test buys ${VUS * ITEMS_PER_USER}`);
  }
  if (sale.per_user_limit < ITEMS_PER_USER) {
    console.warn(`per-user limit ${sale.per_user_limit} < ${ITEMS_PER_USER} items per user`);
  }
  if (sale.items_sold > 0) {
    console.warn(`${sale.items_sold} items are already sold: use a fresh sale for a clean result`);
  }
  return { saleId: sale.sale_id };
}

export default function () {
  const u = __VU - 1; // 0-based user index
  const user = `${USER_PREFIX}${u}`;
  for (let i = 1; i <= ITEMS_PER_USER; i++) {
    const item = u * ITEMS_PER_USER + i;
    const co = http.post(
      `${BASE_URL}/checkout?user_id=${encodeURIComponent(user)}&id=${item}`,
      null,
      { tags: { name: 'POST /checkout', endpoint: 'checkout' } },
    );
    const code = jsonField(co, 'code');
    const coOk = check(co, {
      'checkout status 200': (r) => r.status === 200,
      'checkout returns a code': () => typeof code === 'string' && code.length > 0,
    });
    if (!coOk) {
      console.error(`checkout user=${user} item=${item}: ${co.status} ${co.body}`);
      continue;
    }
    checkoutsOk.add(1);

    const pu = http.post(
      `${BASE_URL}/purchase?code=${encodeURIComponent(code)}`,
      null,
      { tags: { name: 'POST /purchase', endpoint: 'purchase' } },
    );
    const puOk = check(pu, {
      'purchase status 200': (r) => r.status === 200,
      'purchase status is success': (r) => jsonField(r, 'status') === 'success',
      'purchase is for the item checked out': (r) => String(jsonField(r, 'item_id')) === String(item),
    });
    if (puOk) {
      purchasesOk.add(1);
    } else {
      console.error(`purchase user=${user} item=${item}: ${pu.status} ${pu.body}`);
    }
  }
}
