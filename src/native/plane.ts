// The event plane of a native object: one blocking "next events" call in a loop (it runs on
// Deno's blocking thread pool), whose events are dispatched here by type. Logs the data plane
// writes come out through the same logger as TypeScript's own.
import { type Level, levels, logger, logLevel } from "../log.ts";
import { native } from "./ffi.ts";

export const enum Ev {
  Flags = 1,
  Log = 2,
  Frame = 3,
  Link = 4,
  Volume = 5,
  Session = 6,
  Refused = 7,
  Marker = 8,
  Failed = 9,
  Copied = 10,
}
export const FL_JOURNAL = 1;
export const FL_PRESSURE = 2;
export const FL_SENT = 4;

export interface NativeEvent {
  type: Ev;
  source: number;
  aux: number;
  /** A view into the event buffer: copy what is kept beyond the handler. */
  body: Uint8Array;
}

const decoder = new TextDecoder();

/** The body of an event as JSON (events that carry JSON). */
export function eventJson<T>(e: NativeEvent): T {
  return JSON.parse(decoder.decode(e.body)) as T;
}

export function eventText(e: NativeEvent): string {
  return decoder.decode(e.body);
}

const levelOf: Level[] = ["debug", "info", "warn", "error"];

export class Plane {
  readonly ptr: Deno.PointerValue;
  private buf = new Uint8Array(1 << 20);
  private running = true;
  private readonly done: Promise<void>;
  private handlers = new Map<Ev, (e: NativeEvent) => void | Promise<void>>();
  private readonly log = logger("native");

  constructor() {
    this.ptr = native().cn_plane_new(levels.indexOf(logLevel()));
    if (!this.ptr) throw new Error("cannot create the native event plane (out of memory)");
    this.done = this.run();
  }

  /**
   * The handler of one event type (one per type). A handler that returns a promise holds the
   * next events until it settles: frames are handled one at a time, in order, and a slow
   * handler makes the data plane wait (its queue fills, then its socket).
   */
  on(type: Ev, fn: (e: NativeEvent) => void | Promise<void>): this {
    this.handlers.set(type, fn);
    return this;
  }

  private async run(): Promise<void> {
    while (this.running) {
      const n = Number(await native().cn_plane_events(this.ptr, this.buf, BigInt(this.buf.length), 1000));
      if (n < 0) {
        // the next event is larger than the buffer: a larger one, then again
        this.buf = new Uint8Array(Math.max(-n, this.buf.length * 2));
        continue;
      }
      const v = new DataView(this.buf.buffer, 0, n);
      for (let at = 0; at < n;) {
        const len = v.getUint32(at);
        const e: NativeEvent = {
          type: v.getUint16(at + 4) as Ev,
          source: v.getUint32(at + 8),
          aux: v.getUint32(at + 12),
          body: this.buf.subarray(at + 16, at + len),
        };
        at += (len + 7) & ~7;
        try {
          if (e.type === Ev.Log) this.emitLog(e);
          else await this.handlers.get(e.type)?.(e);
        } catch (err) {
          this.log.error("native event handler failed", { type: e.type, error: err });
        }
      }
    }
  }

  private emitLog(e: NativeEvent): void {
    const b = e.body;
    const m = b.indexOf(0), s = b.indexOf(0, m + 1);
    const component = decoder.decode(b.subarray(0, m));
    const msg = decoder.decode(b.subarray(m + 1, s));
    let fields: Record<string, unknown> = {};
    try {
      fields = JSON.parse(decoder.decode(b.subarray(s + 1)));
    } catch { /* a field the data plane could not format: the message alone */ }
    logger(component)[levelOf[e.aux] ?? "info"](msg, fields);
  }

  /** Stops the loop and frees the plane: every native object using it is closed first. */
  async close(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    native().cn_plane_wake(this.ptr);
    await this.done;
    native().cn_plane_free(this.ptr);
  }
}
