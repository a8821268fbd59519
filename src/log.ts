// Structured logs: one JSON object per line on stderr. Field names that look like
// secrets are redacted here as a last line of defence; callers never log secrets.
export type Level = "debug" | "info" | "warn" | "error";
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
export const levels = Object.keys(order) as Level[];

let threshold = order.info;
let sink: (line: string) => void = (line) => {
  try {
    Deno.stderr.writeSync(encoder.encode(line + "\n"));
  } catch {
    // stderr closed: nothing sensible left to do with a log line
  }
};
const encoder = new TextEncoder();
const secretKey = /secret|password|passwd|token|private|credential|cookie|authorization/i;

export function setLogLevel(level: Level): void {
  threshold = order[level];
}

/** The level below which nothing is logged now. */
export function logLevel(): Level {
  return levels.find((l) => order[l] === threshold) ?? "info";
}

/** Redirects log lines (tests capture them to check what is and is not logged). */
export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

export type Fields = Record<string, unknown>;

function redact(fields: Fields): Fields {
  const out: Fields = {};
  for (const [k, v] of Object.entries(fields)) {
    if (secretKey.test(k)) out[k] = "[redacted]";
    else if (v instanceof Error) out[k] = v.message;
    else if (typeof v === "bigint") out[k] = v.toString();
    else out[k] = v;
  }
  return out;
}

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(component: string): Logger;
}

export function logger(component: string): Logger {
  const emit = (level: Level, msg: string, fields?: Fields) => {
    if (order[level] < threshold) return;
    const record = { t: new Date().toISOString(), level, component, msg, ...redact(fields ?? {}) };
    sink(JSON.stringify(record));
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (sub) => logger(`${component}.${sub}`),
  };
}
