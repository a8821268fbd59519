// Talking to the gateway: JSON requests with the session's CSRF token on every change, errors
// as ApiError (status, the server's message, the fields at fault), and the session itself.
import { signal } from "@preact/signals";

export interface SessionInfo {
  user: string;
  role: "admin" | "viewer";
  kind: "session" | "token";
  csrf?: string;
}

/** undefined: not known yet (loading); null: not logged in. */
export const session = signal<SessionInfo | null | undefined>(undefined);

export interface Issue {
  path: string;
  message: string;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly issues: Issue[] = [],
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

export async function api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const csrf = session.value?.csrf;
  if (method !== "GET" && csrf) headers["x-csrf-token"] = csrf;
  let r: Response;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) {
    throw new ApiError(`cannot reach the gateway (${(e as Error).message})`, 0);
  }
  const text = await r.text();
  let data: unknown = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    data = undefined;
  }
  if (!r.ok) {
    const d = (data ?? {}) as { error?: string; issues?: Issue[] };
    if (r.status === 401 && path !== "/api/login" && path !== "/api/setup") session.value = null;
    const retry = Number(r.headers.get("retry-after") ?? "") || undefined;
    throw new ApiError(d.error ?? `${r.status} ${r.statusText}`, r.status, d.issues ?? [], retry);
  }
  return data as T;
}

export const get = <T>(path: string) => api<T>("GET", path);
export const post = <T>(path: string, body?: unknown) => api<T>("POST", path, body ?? {});
export const put = <T>(path: string, body: unknown) => api<T>("PUT", path, body);
export const del = <T>(path: string) => api<T>("DELETE", path);

export async function loadSession(): Promise<void> {
  try {
    session.value = await get<SessionInfo>("/api/session");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) session.value = null;
    else throw e;
  }
}

export function isAdmin(): boolean {
  return session.value?.role === "admin";
}
