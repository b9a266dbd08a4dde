// k6 run -e FILE=data/purchases.ndjson loadtest/k6/ingest.js     (BASE_URL: http://localhost:8080)
// k6 run -e FILE=big.ndjson -e UPLOADS=4 -e VUS=2 loadtest/k6/ingest.js
//
// "Ingest" scenario: VUS clients (at most 2 run at once in the engine: more get 429 INGEST_BUSY,
// which this script counts and retries) each upload FILE as multipart field `file` to
// POST /ingest, UPLOADS times in all. Every answer must be 200 with
// created + updated + unchanged + rejected = total. Make FILE with
// `cargo run --release -- gen-purchases --count 100000 --output FILE`.
// k6 reads FILE into memory once (open() at init), so keep it to a few hundred MB.
import http from './key.js';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://localhost:8080').replace(/\/+$/, '');
const FILE = __ENV.FILE || 'data/purchases.ndjson';
const UPLOADS = parseInt(__ENV.UPLOADS || '2', 10);
const VUS = parseInt(__ENV.VUS || '1', 10);
const content = open(FILE, 'b');

const busy = new Counter('ingest_busy');
const linesPerSec = new Trend('ingest_lines_per_sec');

export const options = {
  scenarios: {
    ingest: { executor: 'shared-iterations', vus: VUS, iterations: UPLOADS, maxDuration: '30m' },
  },
  thresholds: { checks: ['rate==1'] },
};

export default function () {
  for (;;) {
    const started = Date.now();
    const res = http.post(`${BASE_URL}/ingest`, { file: http.file(content, 'purchases.ndjson', 'application/x-ndjson') }, {
      timeout: '30m',
    });
    if (res.status === 429) {
      busy.add(1);
      sleep(1);
      continue;
    }
    const ok = check(res, {
      'ingest 200': (r) => r.status === 200,
      'counts add up': (r) => {
        const b = r.json();
        return b.created + b.updated + b.unchanged + b.rejected === b.total;
      },
    });
    if (ok) linesPerSec.add(res.json('total') / ((Date.now() - started) / 1000));
    return;
  }
}
