// Talking to the store server: the dashboard's read routes under /api/dashboard, with the bearer token when the
// server has one. The token lives in this browser's localStorage (the page asks for it on the first 401).

const TOKEN_KEY = "agl-dashboard-token";

export class AuthError extends Error {}
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  try {
    return window.localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch {
    // private mode: the token lasts until the page is closed
  }
}

// `agl dashboard --token T` opens /#token=T: the fragment never reaches the server; keep it and clean the address.
export function takeTokenFromAddress() {
  const match = window.location.hash.match(/^#token=([^&]+)/);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname + "#/");
  }
}

export function queryString(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((item) => search.append(key, item));
    else search.append(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export async function getJson(path, { signal } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, signal });
  if (response.status === 401) {
    throw new AuthError(token ? "the token was refused" : "this server needs a token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.message) message = body.message;
    } catch {
      // not JSON
    }
    throw new HttpError(response.status, message);
  }
  return response.json();
}
