// The console's only door to the daemon: fetch with the tab's token as a bearer header, errors as
// ApiError, and the session (the token and what it may do) kept in sessionStorage alone.

const TOKEN = "preflix.token";
const KIND = "preflix.kind"; // "admin" or "partner"
const READ_ONLY = "preflix.readOnly"; // "1" once a change was refused as forbidden, or known
const PARTNER = "preflix.partner";
const ENVIRONMENT = "preflix.environment";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Called with a message when the daemon refuses the token (401): the app goes back to login. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN);
  },
  get kind() {
    return sessionStorage.getItem(KIND) || "admin";
  },
  get admin() {
    return this.kind === "admin";
  },
  get readOnly() {
    return sessionStorage.getItem(READ_ONLY) === "1";
  },
  get partner() {
    return sessionStorage.getItem(PARTNER);
  },
  get environment() {
    return sessionStorage.getItem(ENVIRONMENT);
  },
  markReadOnly() {
    sessionStorage.setItem(READ_ONLY, "1");
  },
  start(token, kind, info = {}) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(KIND, kind);
    if (info.readOnly) sessionStorage.setItem(READ_ONLY, "1");
    else sessionStorage.removeItem(READ_ONLY);
    if (info.partner) sessionStorage.setItem(PARTNER, info.partner);
    else sessionStorage.removeItem(PARTNER);
    if (info.environment) sessionStorage.setItem(ENVIRONMENT, info.environment);
    else sessionStorage.removeItem(ENVIRONMENT);
  },
  end() {
    for (const key of [TOKEN, KIND, READ_ONLY, PARTNER, ENVIRONMENT]) sessionStorage.removeItem(key);
  },
};

/** One API call. `body` is sent as JSON. Resolves to the parsed answer (null for 204). */
export async function api(method, path, body, token = session.token) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", "The daemon could not be reached.");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (e) {
      data = text;
    }
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    const error = new ApiError(response.status, err.code || "error", err.message || `HTTP ${response.status}`);
    if (response.status === 401 && token === session.token && token) {
      session.end();
      onUnauthorized("The daemon no longer accepts this token (expired, revoked or wrong). Log in again.");
    } else if (response.status === 403 && method !== "GET" && !session.admin) {
      session.markReadOnly();
    }
    throw error;
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body === undefined ? {} : body);
export const del = (path) => api("DELETE", path);

/** Percent-encodes one path segment or query value. */
export const enc = encodeURIComponent;

/**
 * Finds out what `token` is: `GET /v1/whoami` describes it ({kind, partner_id, environment,
 * read_only}). A daemon without that route: the admin token reads /status, a partner token gets
 * 403 there. Resolves to {kind, partner, environment, readOnly}, or throws ApiError (401: refused).
 */
export async function identify(token) {
  try {
    const me = await api("GET", "/v1/whoami", undefined, token);
    return { kind: me.kind, partner: me.partner_id, environment: me.environment, readOnly: !!me.read_only };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) throw e;
  }
  try {
    await api("GET", "/status", undefined, token);
    return { kind: "admin" };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 403) throw e;
  }
  return { kind: "partner" };
}
