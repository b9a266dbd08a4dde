// k6's http with the engine's service key: every request that carries no
// Authorization of its own sends `Bearer $STAMPEDE_API_KEY` when it is set
// (README.md, Access). Give the key every scope the script calls.
import http from 'k6/http';

const BEARER = __ENV.STAMPEDE_API_KEY ? `Bearer ${__ENV.STAMPEDE_API_KEY}` : null;

function withKey(params) {
  if (!BEARER) return params;
  const out = Object.assign({}, params || {});
  const headers = Object.assign({}, out.headers || {});
  if (!Object.keys(headers).some((h) => h.toLowerCase() === 'authorization')) {
    headers.Authorization = BEARER;
  }
  out.headers = headers;
  return out;
}

export default {
  get: (url, params) => http.get(url, withKey(params)),
  post: (url, body, params) => http.post(url, body, withKey(params)),
  file: (...args) => http.file(...args),
};
