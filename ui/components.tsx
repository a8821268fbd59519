// Shared pieces: loading / error / empty states, state badges, a meter, form fields, a
// confirmation dialog (native <dialog>: focus kept inside, Esc cancels), and a data hook.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, type Issue } from "./api.ts";

export function Loading({ what }: { what: string }) {
  return (
    <div class="loading" role="status" aria-live="polite">
      <span class="spinner" aria-hidden="true" /> Loading {what}…
    </div>
  );
}

/** The field (of `fields`: issue path → its label) an issue belongs to: the longest path that is its prefix. */
export function fieldOf(path: string, fields: Record<string, string>): string | undefined {
  return Object.keys(fields).filter((f) => path === f || path.startsWith(`${f}.`))
    .sort((a, b) => b.length - a.length)[0];
}

/**
 * An error for people. Field problems (the API's issues) are named by the field's label, once:
 * those of the `fields` shown on the page carry their message at the field (issueAt), so here
 * they are only listed by label; the others are listed with their message.
 */
export function ErrorBox(
  { error, retry, fields = {} }: { error: unknown; retry?: () => void; fields?: Record<string, string> },
) {
  if (!error) return null;
  const e = error as ApiError;
  const issues = e.issues ?? [];
  const marked = [...new Set(issues.map((i) => fieldOf(i.path, fields)).filter((f) => f !== undefined))];
  const others = issues.filter((i) => fieldOf(i.path, fields) === undefined);
  return (
    <div class="alert error" role="alert">
      {issues.length === 0 && (
        <>
          <strong>{e.status === 0 ? "Connection problem: " : ""}</strong>
          {e.message ?? String(error)}
        </>
      )}
      {marked.length > 0 && <div>Correct the marked fields: {marked.map((f) => fields[f!]).join(", ")}.</div>}
      {others.length > 0 && (
        <ul>
          {others.map((i) => <li key={i.path}>{humanPath(i.path)}: {i.message}</li>)}
        </ul>
      )}
      {retry && (
        <div>
          <button type="button" class="link" onClick={retry}>Try again</button>
        </div>
      )}
    </div>
  );
}

/** An issue path no field of the page shows, in words: group.remotes.0.rsp.device → "remote center 1, RSP, device". */
export function humanPath(path: string): string {
  const words: Record<string, string> = {
    body: "the request",
    group: "",
    local: "local center",
    lsp: "LSP",
    lgp: "LGP",
    buffer: "buffer",
    rgp: "RGP",
    rsp: "RSP",
    mirror: "mirror strategy",
    recovery: "recovery strategy",
    bufferBound: "buffer bound",
    bandwidthLimit: "bandwidth limit",
    ackPoint: "acknowledgement point",
  };
  const parts = path.split(".");
  const out: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i];
    if (p === "remotes" && /^\d+$/.test(parts[i + 1] ?? "")) {
      out.push(`remote center ${Number(parts[++i]) + 1}`);
    } else if (p === "remotes") out.push("remote centers");
    else if (words[p] !== "") out.push(words[p] ?? p);
  }
  return out.join(", ") || path;
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

const OK = new Set([
  "TRUST",
  "consistent",
  "protected",
  "connected",
  "up",
  "done",
  "admin",
  "valid",
  "met",
  "passed",
]);
const WARN = new Set([
  "SUSPECT",
  "syncing",
  "degraded",
  "testing",
  "paused",
  "recovering",
  "failing-back",
  "failing-over",
  "running",
  "scheduled",
  "waiting",
  "measuring",
]);
const BAD = new Set([
  "FAILURE",
  "failed-over",
  "disconnected",
  "inconsistent",
  "failed",
  "down",
  "unreachable",
  "invalid",
  "unmet",
]);

export function tone(state: string | undefined): string {
  if (!state) return "";
  if (OK.has(state)) return "ok";
  if (WARN.has(state)) return "warn";
  if (BAD.has(state)) return "bad";
  if (state === "configured") return "info";
  return "";
}

export function Badge({ state, label }: { state: string | undefined; label?: string }) {
  return <span class={`badge ${tone(state)}`} data-state={state ?? ""}>{label ?? state ?? "unknown"}</span>;
}

/** A horizontal bar for a fraction 0…1 (an SVG: no inline styles under the page's CSP). */
export function Meter({ value, label }: { value: number; label: string }) {
  const v = Math.max(0, Math.min(1, Number.isFinite(value) ? value : 0));
  const fill = v > 0.9 ? "var(--bad)" : v > 0.7 ? "var(--warn)" : "var(--ok)";
  return (
    <div
      class="meter"
      role="meter"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={Math.round(v * 100)}
      aria-label={label}
    >
      <svg viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">
        <rect x="0" y="0" height="10" width={String(v * 100)} fill={fill} />
      </svg>
    </div>
  );
}

export function Field(
  { label, hint, error, children }: {
    label: string;
    hint?: string;
    error?: string;
    children: ComponentChildren;
  },
) {
  return (
    <label class="field">
      <span>{label}</span>
      {children}
      {hint && <small>{hint}</small>}
      {error && <span class="err" role="alert">{error}</span>}
    </label>
  );
}

/** The message of the issue at `path` (or below it), for a field. */
export function issueAt(error: unknown, path: string): string | undefined {
  const issues: Issue[] = (error as ApiError)?.issues ?? [];
  return issues.find((i) => i.path === path || i.path.startsWith(`${path}.`))?.message;
}

export interface ConfirmProps {
  title: string;
  confirmLabel: string;
  danger?: boolean;
  children?: ComponentChildren;
  onConfirm: () => Promise<unknown>;
  onClose: () => void;
}

/** A modal asking to confirm an action that changes service; shows the action's error inside. */
export function ConfirmDialog(p: ConfirmProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d?.open && d.close();
  }, []);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      await p.onConfirm();
      p.onClose();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} aria-labelledby="dialog-title" onClose={p.onClose} onCancel={p.onClose}>
      <form class="stack" onSubmit={submit}>
        <h2 id="dialog-title">{p.title}</h2>
        {p.children}
        <ErrorBox error={error} />
        <div class="dialog-actions">
          <button type="button" onClick={p.onClose}>Cancel</button>
          <button type="submit" class={p.danger ? "danger" : "primary"} disabled={busy}>
            {busy ? "Working…" : p.confirmLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}

/** GETs `path` (again when it changes or reload() is called). */
export function useResource<T>(path: string | undefined) {
  const [state, setState] = useState<{ loading: boolean; error?: unknown; data?: T }>({ loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (!path) return;
    let live = true;
    setState((s) => ({ ...s, loading: true, error: undefined }));
    get<T>(path).then(
      (data) => live && setState({ loading: false, data }),
      (error) => live && setState({ loading: false, error }),
    );
    return () => {
      live = false;
    };
  }, [path, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}
