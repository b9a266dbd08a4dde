// k6 run -e ADMIN_TOKEN=... loadtest/k6/orders.js      (BASE_URL defaults to http://localhost:8080)
//
// "Orders" scenario: B buyers over P products of limited stock. setup() creates the products
// (admin); each VU then loops over a mix: plain orders (70%), holds confirmed (10%), cancelled
// (5%) or left to expire (5%), and orders with an Idempotency-Key sent twice (10%: the retry must
// get the same status and body, with Idempotent-Replayed: true). Demand exceeds stock, so 409
// OUT_OF_STOCK is an expected answer. teardown() checks every product's counters
// (available + reserved + sold = stock_total, available >= 0) and GET /admin/reconcile.
import http from './key.js';
import { check, fail, sleep } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
const PRODUCTS = parseInt(__ENV.PRODUCTS || '20', 10);
const STOCK = parseInt(__ENV.STOCK || '5000', 10);
const BUYERS = parseInt(__ENV.BUYERS || '2000', 10);
const VUS = parseInt(__ENV.VUS || '200', 10);
const DURATION = __ENV.DURATION || '30s';

const ordersOk = new Counter('orders_ok');
const outOfStock = new Counter('orders_out_of_stock');
const replaysIdentical = new Counter('replays_identical');

export const options = {
  scenarios: {
    orders: { executor: 'constant-vus', vus: VUS, duration: DURATION },
  },
  thresholds: {
    'http_req_duration{endpoint:order}': ['p(99)<100'],
    checks: ['rate==1'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

const admin = { headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' } };
const jsonHeaders = { 'Content-Type': 'application/json' };

export function setup() {
  if (!ADMIN_TOKEN) fail('set ADMIN_TOKEN to the engine\'s STAMPEDE_ADMIN_TOKEN');
  const ids = [];
  for (let p = 0; p < PRODUCTS; p++) {
    const res = http.post(`${BASE_URL}/products`,
      JSON.stringify({ name: `k6-${p}`, stock: STOCK, price_cents: 1999, merchant_id: 1 }), admin);
    if (res.status !== 201) fail(`POST /products: ${res.status} ${res.body}`);
    ids.push(res.json('id'));
  }
  return { ids };
}

function order(body, key) {
  const headers = key ? Object.assign({ 'Idempotency-Key': key }, jsonHeaders) : jsonHeaders;
  return http.post(`${BASE_URL}/orders`, JSON.stringify(body), { headers, tags: { endpoint: 'order' } });
}

export default function (data) {
  const roll = Math.random() * 100;
  const body = {
    product_id: data.ids[Math.floor(Math.random() * data.ids.length)],
    quantity: 1 + Math.floor(Math.random() * 3),
    buyer_id: `b${Math.floor(Math.random() * BUYERS)}`,
  };
  if (roll >= 70 && roll < 85) body.hold_secs = 60;
  if (roll >= 85 && roll < 90) body.hold_secs = 1;
  const key = roll >= 90 ? `k6-${__VU}-${__ITER}-${Math.random()}` : null;
  const res = order(body, key);
  check(res, { 'order 200 or 409 OUT_OF_STOCK': (r) => r.status === 200 || (r.status === 409 && r.json('error.code') === 'OUT_OF_STOCK') });
  if (res.status === 409) { outOfStock.add(1); return; }
  if (res.status !== 200) return;
  ordersOk.add(1);
  const id = res.json('id');
  if (key) {
    const again = order(body, key);
    const same = check(again, {
      'retry replays the first answer': (r) => r.status === res.status && r.body === res.body,
      'retry is marked replayed': (r) => r.headers['Idempotent-Replayed'] === 'true',
    });
    if (same) replaysIdentical.add(1);
  } else if (roll >= 70 && roll < 85) {
    const action = roll < 80 ? 'confirm' : 'cancel';
    const r = http.post(`${BASE_URL}/orders/${id}/${action}`, null, { tags: { endpoint: action } });
    check(r, { [`${action} 200`]: (x) => x.status === 200 });
  }
}

export function teardown(data) {
  sleep(3); // holds of 1 s expire; the engine returns their stock within 1 s
  for (const id of data.ids) {
    const p = http.get(`${BASE_URL}/products/${id}`).json();
    check(p, {
      'available + reserved + sold = stock_total': (x) => x.available + x.reserved + x.sold === x.stock_total,
      'available >= 0': (x) => x.available >= 0,
      'no hold left': (x) => x.reserved === 0,
    });
  }
  let rec;
  for (let i = 0; i < 10; i++) {
    rec = http.get(`${BASE_URL}/admin/reconcile`, admin);
    if (rec.status === 200) break;
    sleep(1);
  }
  check(rec, { 'reconcile ok (Postgres = Redis)': (r) => r.status === 200 && r.json('ok') === true });
}
