// The login page (the only thing shown before a login) and the first-start setup page.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, post, session, type SessionInfo } from "../api.ts";
import { ErrorBox, Field, issueAt } from "../components.tsx";
import { navigate, query } from "../router.ts";

function Logo() {
  return (
    <svg class="brand-mark" viewBox="0 0 24 24" aria-hidden="true">
      <circle cx="12" cy="12" r="10" fill="none" stroke="currentColor" stroke-width="2.5" />
      <path d="M7 12h10M12 7v10" stroke="currentColor" stroke-width="2.5" />
    </svg>
  );
}

export function LoginPage() {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const first = useRef<HTMLInputElement>(null);
  useEffect(() => first.current?.focus(), []);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const s = await post<SessionInfo>("/api/login", { name, password });
      session.value = { ...s, kind: "session" };
      const next = query("next");
      navigate(next && next.startsWith("/") && !next.startsWith("//") ? next : "/", true);
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 429
          ? new ApiError(`Too many failed logins. Try again in ${err.retryAfter ?? 60} seconds.`, 429)
          : err,
      );
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="center">
      <main class="card">
        <div class="brand">
          <Logo /> Continuum
        </div>
        <h1 tabIndex={-1}>Log in</h1>
        <form class="stack" onSubmit={submit} aria-describedby="login-error">
          <Field label="User name">
            <input
              ref={first}
              name="username"
              autocomplete="username"
              required
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
            />
          </Field>
          <Field label="Password">
            <input
              type="password"
              name="password"
              autocomplete="current-password"
              required
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </Field>
          <div id="login-error">
            <ErrorBox error={error} />
          </div>
          <button type="submit" class="primary" disabled={busy}>{busy ? "Logging in…" : "Log in"}</button>
        </form>
      </main>
    </div>
  );
}

export function SetupPage() {
  const token = location.hash.slice(1);
  const [name, setName] = useState("admin");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (password !== again) {
      setError(
        new ApiError("The two passwords differ.", 400, [{
          path: "again",
          message: "differs from the password",
        }]),
      );
      return;
    }
    setBusy(true);
    setError(undefined);
    try {
      const s = await post<SessionInfo>("/api/setup", { token, name, password });
      // the token is spent: drop it from the address bar and the history
      history.replaceState(null, "", "/");
      session.value = { ...s, kind: "session" };
      navigate("/", true);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="center">
      <main class="card">
        <div class="brand">
          <Logo /> Continuum
        </div>
        <h1 tabIndex={-1}>First start: create the admin</h1>
        {!token
          ? (
            <div class="alert info">
              Open the setup link the gateway printed when it first started (a <code>setup-url=…</code>{" "}
              line on its standard output). It holds a one-time token.
            </div>
          )
          : (
            <form class="stack" onSubmit={submit}>
              <p class="muted small">
                This link works once and for 30 minutes. The password needs at least 10 characters.
              </p>
              <Field label="Admin user name" error={issueAt(error, "name")}>
                <input
                  name="username"
                  autocomplete="username"
                  required
                  value={name}
                  onInput={(e) => setName(e.currentTarget.value)}
                />
              </Field>
              <Field label="Password" error={issueAt(error, "password")}>
                <input
                  type="password"
                  name="new-password"
                  autocomplete="new-password"
                  required
                  minLength={10}
                  value={password}
                  onInput={(e) => setPassword(e.currentTarget.value)}
                />
              </Field>
              <Field label="Password again" error={issueAt(error, "again")}>
                <input
                  type="password"
                  name="again"
                  autocomplete="new-password"
                  required
                  value={again}
                  onInput={(e) => setAgain(e.currentTarget.value)}
                />
              </Field>
              <ErrorBox error={error} />
              <button type="submit" class="primary" disabled={busy}>
                {busy ? "Creating…" : "Create admin and log in"}
              </button>
            </form>
          )}
      </main>
    </div>
  );
}

export { Logo };
