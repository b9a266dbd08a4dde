// A settlement job end to end, for users with k6: POST /jobs/settlement,
// poll GET /jobs/{id} until COMPLETED, download the CSV. The Rust driver
// (`loadtest settlement`) also times the psql baseline and checks the rows.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e ADMIN_TOKEN=… loadtest/k6/settlement.js
//
// Environment: BASE_URL, ADMIN_TOKEN (the engine's STAMPEDE_ADMIN_TOKEN),
// FROM and TO (2025-01-01, 2025-01-31), MAX_SECS (600).
import http from './key.js';
import { check, fail, sleep } from 'k6';
import { Trend } from 'k6/metrics';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const HEADERS = {
  Authorization: `Bearer ${__ENV.ADMIN_TOKEN || ''}`,
  'Content-Type': 'application/json',
};
const FROM = __ENV.FROM || '2025-01-01';
const TO = __ENV.TO || '2025-01-31';
const MAX_SECS = Number(__ENV.MAX_SECS || 600);

const jobSecs = new Trend('settlement_job_seconds');
const downloadSecs = new Trend('settlement_download_seconds');

export const options = { vus: 1, iterations: 1 };

export default function () {
  const started = Date.now();
  const created = http.post(`${BASE}/jobs/settlement`, JSON.stringify({ from: FROM, to: TO }), { headers: HEADERS });
  check(created, { 'POST answers 202': (r) => r.status === 202 }) || fail(`POST: ${created.status} ${created.body}`);
  const id = created.json('job_id');
  let view;
  for (;;) {
    view = http.get(`${BASE}/jobs/${id}`, { headers: HEADERS }).json();
    if (view.status === 'COMPLETED') break;
    if (view.status === 'FAILED' || view.status === 'CANCELLED') fail(`job ended ${JSON.stringify(view)}`);
    if ((Date.now() - started) / 1000 > MAX_SECS) fail(`job not completed within ${MAX_SECS} s`);
    sleep(0.01);
  }
  const completed = Date.now();
  jobSecs.add((completed - started) / 1000);
  const csv = http.get(`${BASE}${view.download_url}`, { headers: HEADERS });
  downloadSecs.add((Date.now() - completed) / 1000);
  check(csv, {
    'CSV answers 200': (r) => r.status === 200,
    'CSV has the header': (r) => r.body.startsWith('merchant_id,date,gross_cents,fee_cents,net_cents,txn_count\n'),
    'processed equals total': () => view.processed === view.total,
  });
}
