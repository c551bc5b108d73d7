// The dashboard's calls to /_/api. The session lives in an HttpOnly cookie
// the script cannot read; the CSRF token is kept in memory only (never in
// localStorage) and sent on every request that changes something.
let csrf = '';
let onSignedOut = () => {};

export function setCsrf(token) {
  csrf = token || '';
}

// The token, for the live view's socket (a handshake cannot carry headers).
export function getCsrf() {
  return csrf;
}

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.message || body.msg || body.error_description || body.error)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// fetch() under /_/api: JSON in and out unless `raw` is asked for.
export async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { ...headers }, credentials: 'same-origin' };
  if (method !== 'GET' && method !== 'HEAD') init.headers['x-sovra-csrf'] = csrf;
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof ArrayBuffer) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers['content-type'] = init.headers['content-type'] || 'application/json';
    }
  }
  const response = await fetch(`/_/api${path}`, init);
  if (response.status === 401 && path !== '/session') {
    onSignedOut();
  }
  if (raw) {
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    return response;
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, headers: response.headers, status: response.status };
}

// Encodes each segment of an object path, keeping the slashes.
export function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}
