// Alarm delivery to webhooks: each event is POSTed as JSON to every configured URL, signed with the
// shared secret, in order per URL, retried with exponential backoff while the receiver is
// unreachable or answers 5xx, 408 or 429, until it is an hour old (then it is logged as given up;
// the log line holds the event). Signature: `X-Continuum-Signature: sha256=HEX`, the HMAC-SHA256
// with the secret of `TIMESTAMP.BODY`, TIMESTAMP being the `X-Continuum-Timestamp` header (Unix
// seconds): a receiver recomputes it and refuses old timestamps, so a recorded delivery cannot be
// replayed later. URLs are logged without their query and credentials, the secret never.
import { createHmac } from "node:crypto";
import { logger } from "../log.ts";
import { UsageError } from "../cli/flags.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import type { AlarmEvent } from "./alarm.ts";

const log = logger("alarms");

export interface WebhookOptions {
  urls: URL[];
  secret: Uint8Array;
  /** First retry after this, doubling up to maxDelayMs; given up once an event is giveUpAfterMs old. */
  retry?: { firstDelayMs: number; maxDelayMs: number; giveUpAfterMs: number };
  timeoutMs?: number;
  /** Events waiting per URL; beyond it the oldest is dropped (and logged). */
  queueLimit?: number;
}

export interface WebhookStatus {
  url: string;
  delivered: number;
  failed: number;
  pending: number;
  lastError: string | null;
}

/** A webhook URL from a flag: http(s) only; a clear error otherwise. */
export function parseWebhookUrl(text: string): URL {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new Error(`--alarm-webhook ${redactText(text)}: not a URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new Error(`--alarm-webhook ${redactUrl(u)}: must be http:// or https://`);
  }
  return u;
}

/** The webhooks of --alarm-webhook, signed with --alarm-secret-file; none without a URL. */
export function openWebhooks(urls: string[], secretFile: string | undefined): Webhooks | undefined {
  if (urls.length === 0) {
    if (secretFile) log.warn("--alarm-secret-file without --alarm-webhook: alarms are only logged");
    return undefined;
  }
  if (!secretFile) throw new UsageError("--alarm-webhook needs --alarm-secret-file (webhooks are signed)");
  let parsed;
  try {
    parsed = urls.map(parseWebhookUrl);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return new Webhooks({ urls: parsed, secret: readSecretFile(secretFile) });
}

/** A URL as logged: no credentials, no query (either may hold a token). */
export function redactUrl(u: URL): string {
  return `${u.protocol}//${u.host}${u.pathname}`;
}

function redactText(text: string): string {
  return text.replace(/\?.*$/, "").replace(/\/\/[^/@]*@/, "//");
}

/** The signature header's value for a body sent at `timestamp` (Unix seconds). */
export function signature(secret: Uint8Array, timestamp: number, body: string): string {
  return `sha256=${createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex")}`;
}

interface Target {
  url: URL;
  queue: { event: AlarmEvent; body: string; first: number; attempts: number }[];
  delivered: number;
  failed: number;
  lastError: string | null;
  timer?: ReturnType<typeof setTimeout>;
  busy: boolean;
}

export class Webhooks {
  private readonly targets: Target[];
  private readonly retry: { firstDelayMs: number; maxDelayMs: number; giveUpAfterMs: number };
  private closed = false;

  constructor(private readonly o: WebhookOptions) {
    this.targets = o.urls.map((url) => ({
      url,
      queue: [],
      delivered: 0,
      failed: 0,
      lastError: null,
      busy: false,
    }));
    this.retry = o.retry ?? { firstDelayMs: 1000, maxDelayMs: 60_000, giveUpAfterMs: 3_600_000 };
  }

  deliver(event: AlarmEvent): void {
    if (this.closed) return;
    const body = JSON.stringify({ version: 1, ...event });
    for (const t of this.targets) {
      t.queue.push({ event, body, first: performance.now(), attempts: 0 });
      if (t.queue.length > (this.o.queueLimit ?? 1000)) {
        const dropped = t.queue.shift()!;
        log.error("alarm webhook queue full: the oldest alarm is dropped", {
          url: redactUrl(t.url),
          alarm: dropped.event,
        });
      }
      this.pump(t);
    }
  }

  status(): WebhookStatus[] {
    return this.targets.map((t) => ({
      url: redactUrl(t.url),
      delivered: t.delivered,
      failed: t.failed,
      pending: t.queue.length,
      lastError: t.lastError,
    }));
  }

  /** Stops retrying; what is still pending is logged (it is also in the log as raised). */
  close(): void {
    this.closed = true;
    for (const t of this.targets) {
      clearTimeout(t.timer);
      for (const q of t.queue) {
        log.warn("alarm not delivered before the gateway stopped", { url: redactUrl(t.url), id: q.event.id });
      }
      t.queue = [];
    }
  }

  private pump(t: Target): void {
    if (t.busy || t.timer || this.closed || t.queue.length === 0) return;
    t.busy = true;
    this.attempt(t).finally(() => {
      t.busy = false;
      this.pump(t);
    });
  }

  private async attempt(t: Target): Promise<void> {
    const q = t.queue[0];
    q.attempts++;
    const error = await this.post(t.url, q.body, q.event);
    if (error === undefined) {
      t.queue.shift();
      t.delivered++;
      t.lastError = null;
      if (q.attempts > 1) {
        log.info("alarm delivered after retries", { url: redactUrl(t.url), id: q.event.id });
      }
      return;
    }
    t.failed++;
    t.lastError = error.message;
    const age = performance.now() - q.first;
    if (!error.retry || age >= this.retry.giveUpAfterMs) {
      t.queue.shift();
      log.error("alarm webhook gave up", {
        url: redactUrl(t.url),
        reason: error.message,
        attempts: q.attempts,
        alarm: q.event,
      });
      return;
    }
    const delay = Math.min(this.retry.maxDelayMs, this.retry.firstDelayMs * 2 ** (q.attempts - 1));
    log.warn("alarm webhook failed: retrying", {
      url: redactUrl(t.url),
      reason: error.message,
      attempt: q.attempts,
      retryInMs: delay,
    });
    t.timer = setTimeout(() => {
      t.timer = undefined;
      this.pump(t);
    }, delay);
  }

  private async post(
    url: URL,
    body: string,
    event: AlarmEvent,
  ): Promise<{ message: string; retry: boolean } | undefined> {
    const timestamp = Math.floor(Date.now() / 1000);
    try {
      const r = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "continuum-alarms",
          "x-continuum-event": event.kind,
          "x-continuum-delivery": event.id,
          "x-continuum-timestamp": String(timestamp),
          "x-continuum-signature": signature(this.o.secret, timestamp, body),
        },
        body,
        signal: AbortSignal.timeout(this.o.timeoutMs ?? 10_000),
      });
      await r.body?.cancel();
      if (r.ok) return undefined;
      return { message: `HTTP ${r.status}`, retry: r.status >= 500 || r.status === 408 || r.status === 429 };
    } catch (e) {
      // the message of a failed fetch names the host, never the query or the credentials
      const message = (e as Error).name === "TimeoutError" ? "no answer in time" : (e as Error).message;
      return { message: message.replace(url.href, redactUrl(url)), retry: true };
    }
  }
}
