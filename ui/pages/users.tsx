// Access (admins): users with their roles, and API tokens for automation (a new token is
// shown once). Everyone: their own password.
import { useState } from "preact/hooks";
import { del, isAdmin, post, put, session } from "../api.ts";
import { ConfirmDialog, Empty, ErrorBox, Field, issueAt, Loading, useResource } from "../components.tsx";
import { dateTime } from "../format.ts";

interface UserRow {
  name: string;
  role: "admin" | "viewer";
  createdAt: number;
}
interface TokenRow {
  name: string;
  role: "admin" | "viewer";
  createdAt: number;
  lastUsed: number | null;
}

function OwnPassword() {
  const [current, setCurrent] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const [ok, setOk] = useState(false);
  return (
    <form
      class="panel stack"
      aria-labelledby="h-own"
      onSubmit={async (e) => {
        e.preventDefault();
        setError(undefined);
        setOk(false);
        try {
          await post("/api/session/password", { current, password });
          setCurrent("");
          setPassword("");
          setOk(true);
        } catch (err) {
          setError(err);
        }
      }}
    >
      <h2 id="h-own">Your password</h2>
      <div class="fields">
        <Field label="Current password" error={issueAt(error, "current")}>
          <input
            type="password"
            autocomplete="current-password"
            required
            value={current}
            onInput={(e) => setCurrent(e.currentTarget.value)}
          />
        </Field>
        <Field label="New password" hint="at least 10 characters" error={issueAt(error, "password")}>
          <input
            type="password"
            autocomplete="new-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </Field>
      </div>
      <ErrorBox error={error} />
      {ok && <div class="alert ok" role="status">Password changed; your other sessions were logged out.</div>}
      <div>
        <button type="submit">Change password</button>
      </div>
    </form>
  );
}

export function AccessPage() {
  const admin = isAdmin();
  const users = useResource<UserRow[]>(admin ? "/api/users" : undefined);
  const tokens = useResource<TokenRow[]>(admin ? "/api/tokens" : undefined);
  const [u, setU] = useState({ name: "", password: "", role: "viewer" });
  const [t, setT] = useState({ name: "", role: "viewer" });
  const [error, setError] = useState<unknown>(undefined);
  const [tokenError, setTokenError] = useState<unknown>(undefined);
  const [newToken, setNewToken] = useState("");
  const [removing, setRemoving] = useState<{ what: string; path: string; reload: () => void } | undefined>();
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Access</h1>
        <span class="small muted">logged in as {session.value?.user} ({session.value?.role})</span>
      </div>
      <OwnPassword />
      {admin && (
        <>
          <section class="panel" aria-labelledby="h-users">
            <h2 id="h-users">Users</h2>
            {users.loading && !users.data && <Loading what="users" />}
            <ErrorBox error={users.error} retry={users.reload} />
            {users.data && (
              <div class="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th>User</th>
                      <th>Role</th>
                      <th>Since</th>
                      <th />
                    </tr>
                  </thead>
                  <tbody>
                    {users.data.map((x) => (
                      <tr key={x.name}>
                        <td>{x.name}</td>
                        <td>
                          <select
                            aria-label={`role of ${x.name}`}
                            value={x.role}
                            onChange={(e) =>
                              put(`/api/users/${encodeURIComponent(x.name)}`, { role: e.currentTarget.value })
                                .then(
                                  users.reload,
                                  (err) => (setError(err), users.reload()),
                                )}
                          >
                            <option value="admin">admin</option>
                            <option value="viewer">viewer</option>
                          </select>
                        </td>
                        <td>{dateTime(x.createdAt)}</td>
                        <td>
                          <button
                            type="button"
                            onClick={() =>
                              setRemoving({
                                what: `user ${x.name}`,
                                path: `/api/users/${encodeURIComponent(x.name)}`,
                                reload: users.reload,
                              })}
                          >
                            Delete
                          </button>
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
            <form
              class="stack"
              onSubmit={async (e) => {
                e.preventDefault();
                setError(undefined);
                try {
                  await post("/api/users", u);
                  setU({ name: "", password: "", role: "viewer" });
                  users.reload();
                } catch (err) {
                  setError(err);
                }
              }}
            >
              <h3>Add a user</h3>
              <div class="fields">
                <Field label="Name" error={issueAt(error, "name")}>
                  <input
                    name="new-user"
                    required
                    value={u.name}
                    onInput={(e) => setU({ ...u, name: e.currentTarget.value })}
                  />
                </Field>
                <Field label="Password" hint="at least 10 characters" error={issueAt(error, "password")}>
                  <input
                    type="password"
                    autocomplete="new-password"
                    required
                    value={u.password}
                    onInput={(e) => setU({ ...u, password: e.currentTarget.value })}
                  />
                </Field>
                <Field label="Role">
                  <select value={u.role} onChange={(e) => setU({ ...u, role: e.currentTarget.value })}>
                    <option value="viewer">viewer (read-only)</option>
                    <option value="admin">admin</option>
                  </select>
                </Field>
              </div>
              <ErrorBox error={error} />
              <div>
                <button type="submit">Add user</button>
              </div>
            </form>
          </section>
          <section class="panel" aria-labelledby="h-tokens">
            <h2 id="h-tokens">API tokens</h2>
            <p class="small muted">
              For automation: send{" "}
              <code>Authorization: Bearer TOKEN</code>. The gateway's api-token file is an admin token as
              well.
            </p>
            {tokens.loading && !tokens.data && <Loading what="tokens" />}
            <ErrorBox error={tokens.error} retry={tokens.reload} />
            {tokens.data?.length === 0 && <Empty>No API token made here.</Empty>}
            {tokens.data && tokens.data.length > 0 && (
              <div class="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th>Token</th>
                      <th>Role</th>
                      <th>Last used</th>
                      <th />
                    </tr>
                  </thead>
                  <tbody>
                    {tokens.data.map((x) => (
                      <tr key={x.name}>
                        <td>{x.name}</td>
                        <td>{x.role}</td>
                        <td>{dateTime(x.lastUsed)}</td>
                        <td>
                          <button
                            type="button"
                            onClick={() =>
                              setRemoving({
                                what: `token ${x.name}`,
                                path: `/api/tokens/${encodeURIComponent(x.name)}`,
                                reload: tokens.reload,
                              })}
                          >
                            Revoke
                          </button>
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
            <form
              class="stack"
              onSubmit={async (e) => {
                e.preventDefault();
                setTokenError(undefined);
                try {
                  const r = await post<{ token: string }>("/api/tokens", t);
                  setNewToken(r.token);
                  setT({ name: "", role: "viewer" });
                  tokens.reload();
                } catch (err) {
                  setTokenError(err);
                }
              }}
            >
              <h3>Make a token</h3>
              <div class="fields">
                <Field label="Name" error={issueAt(tokenError, "name")}>
                  <input
                    name="token-name"
                    required
                    value={t.name}
                    onInput={(e) => setT({ ...t, name: e.currentTarget.value })}
                  />
                </Field>
                <Field label="Role">
                  <select value={t.role} onChange={(e) => setT({ ...t, role: e.currentTarget.value })}>
                    <option value="viewer">viewer (read-only)</option>
                    <option value="admin">admin</option>
                  </select>
                </Field>
              </div>
              <ErrorBox error={tokenError} />
              {newToken && (
                <div class="alert info" role="status">
                  Copy it now, it is not shown again: <code class="mono">{newToken}</code>
                </div>
              )}
              <div>
                <button type="submit">Make token</button>
              </div>
            </form>
          </section>
        </>
      )}
      {removing && (
        <ConfirmDialog
          title={`Delete ${removing.what}?`}
          confirmLabel="Delete"
          danger
          onClose={() => setRemoving(undefined)}
          onConfirm={async () => {
            await del(removing.path);
            removing.reload();
          }}
        >
          <p>Its access ends at once.</p>
        </ConfirmDialog>
      )}
    </>
  );
}
