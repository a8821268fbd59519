// Request and error helpers shared by the API routes: JSON bodies checked with a zod schema,
// errors answered as JSON `{ error, issues? }` whose message says what is wrong and where.
import type { Context } from "hono";
import type { z } from "zod";
import { describeIssues, type Issue, TransitionError, zodIssues } from "../tasks/model.ts";
import { StoreError } from "../tasks/store.ts";
import { ActionError } from "../tasks/actions.ts";
import { AuthError } from "./auth.ts";

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly issues: Issue[] = [],
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/**
 * The request's JSON body checked against `schema`. An empty body counts as `{}` when
 * `emptyOk` (actions without parameters). Throws an HttpError: 415 for another content type,
 * 400 for JSON that does not parse or does not fit (naming each field at fault).
 */
export async function readBody<S extends z.ZodType>(
  c: Context,
  schema: S,
  emptyOk = false,
): Promise<z.infer<S>> {
  return validate(await readJson(c, emptyOk), schema);
}

/** The largest request body the API reads. */
export const MAX_BODY = 1024 * 1024;

export function tooLarge(): HttpError {
  return new HttpError(413, `body: too large (at most ${MAX_BODY / 1024 / 1024} MiB)`);
}

/** The request's body as parsed JSON (`{}` when empty and `emptyOk`). */
export async function readJson(c: Context, emptyOk = false): Promise<unknown> {
  // at most MAX_BODY bytes: the web server's body limit refused larger ones before any route
  const text = await c.req.text();
  if (text.trim() === "") {
    if (!emptyOk) {
      throw new HttpError(400, "body: a JSON object is required", [{ path: "body", message: "is required" }]);
    }
    return {};
  }
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/json\b/i.test(type)) {
    throw new HttpError(415, "send the body as JSON (Content-Type: application/json)");
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `body: not valid JSON (${(e as Error).message})`, [{
      path: "body",
      message: "is not valid JSON",
    }]);
  }
}

/** `raw` checked against `schema`; a 400 HttpError naming every field at fault. */
export function validate<S extends z.ZodType>(raw: unknown, schema: S): z.infer<S> {
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issues = zodIssues(r.error);
    throw new HttpError(400, describeIssues(issues), issues);
  }
  return r.data;
}

/** The JSON answer (and status) of an error thrown by a route. */
export function errorResponse(c: Context, e: unknown): Response | undefined {
  if (e instanceof HttpError) {
    for (const [k, v] of Object.entries(e.headers)) c.header(k, v);
    return c.json(
      { error: e.message, ...(e.issues.length ? { issues: e.issues } : {}) },
      e.status as 400,
    );
  }
  if (e instanceof StoreError) {
    return c.json({ error: e.message, ...(e.issues.length ? { issues: e.issues } : {}) }, e.status);
  }
  if (e instanceof TransitionError) {
    return c.json({ error: e.message, state: e.state, event: e.event, allowed: e.allowed }, 409);
  }
  if (e instanceof ActionError) return c.json({ error: e.message }, e.status);
  if (e instanceof AuthError) {
    if (e.retryAfterS) c.header("retry-after", String(e.retryAfterS));
    return c.json({ error: e.message }, e.status);
  }
  return undefined;
}
