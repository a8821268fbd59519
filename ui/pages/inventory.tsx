// Sites, hosts and volumes (partitions): lists, forms to add them (also used by the task
// wizard), deletion with confirmation. Viewers see the lists only. What the gateway found by
// itself is marked discovered, with when it was last seen (the lists refresh every few seconds).
import { useEffect, useState } from "preact/hooks";
import { del, isAdmin, post } from "../api.ts";
import { ConfirmDialog, Empty, ErrorBox, Field, issueAt, Loading, useResource } from "../components.tsx";
import { ago, bytes, dateTime, parseSize, sizeProblem } from "../format.ts";
import type { Host, Site, Stored, Volume } from "../types.ts";

/** Whether the gateway found it by itself, and when it last saw it. */
export function Found({ item }: { item: Stored }) {
  if (!item.discovered) return <span class="muted small">added by hand</span>;
  return (
    <span class="small" data-found="discovered" title={item.lastSeen ? dateTime(item.lastSeen) : undefined}>
      discovered · {item.lastSeen ? `seen ${ago(item.lastSeen)}` : "not seen yet"}
    </span>
  );
}

export function SiteForm({ role, onCreated }: { role?: "local" | "remote"; onCreated: (s: Site) => void }) {
  const [name, setName] = useState("");
  const [r, setR] = useState<"local" | "remote">(role ?? "remote");
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const s = await post<Site>("/api/sites", { name, role: r });
      setName("");
      onCreated(s);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="stack" onSubmit={submit} aria-label={`add a ${role ?? ""} site`}>
      <div class="fields">
        <Field label="Site name" error={issueAt(error, "name")}>
          <input name="site-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        {!role && (
          <Field label="Role">
            <select
              name="site-role"
              value={r}
              onChange={(e) => setR(e.currentTarget.value as "local" | "remote")}
            >
              <option value="local">local (production)</option>
              <option value="remote">remote (recovery)</option>
            </select>
          </Field>
        )}
      </div>
      <ErrorBox error={error} fields={{ name: "Site name", role: "Role" }} />
      <div>
        <button type="submit" disabled={busy}>Add {role ?? ""} site</button>
      </div>
    </form>
  );
}

export function HostForm(
  { sites, site, role, onCreated }: {
    sites: Site[];
    site?: string;
    role?: Host["role"];
    onCreated: (h: Host) => void;
  },
) {
  const [name, setName] = useState("");
  const [chosen, setS] = useState(site ?? "");
  // the choice follows the list (a site added meanwhile, one removed)
  const s = sites.some((x) => x.name === chosen) ? chosen : (site ?? sites[0]?.name ?? "");
  const [r, setR] = useState<Host["role"]>(role ?? "application");
  const [address, setAddress] = useState("");
  const [agent, setAgent] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const h = await post<Host>("/api/hosts", {
        name,
        site: s,
        role: r,
        ...(address ? { address } : {}),
        ...(agent && r === "application" ? { agent } : {}),
      });
      setName("");
      setAddress("");
      setAgent("");
      onCreated(h);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (sites.length === 0) return <Empty>Add a site first.</Empty>;
  return (
    <form class="stack" onSubmit={submit} aria-label="add a host">
      <div class="fields">
        <Field label="Host name" error={issueAt(error, "name")} hint="any name for the machine">
          <input name="host-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </Field>
        <Field label="Site" error={issueAt(error, "site")}>
          <select name="host-site" value={s} onChange={(e) => setS(e.currentTarget.value)}>
            {sites.map((x) => <option key={x.name} value={x.name}>{x.name} ({x.role})</option>)}
          </select>
        </Field>
        <Field label="Role" error={issueAt(error, "role")}>
          <select name="host-role" value={r} onChange={(e) => setR(e.currentTarget.value as Host["role"])}>
            <option value="application">application server (agent)</option>
            <option value="gateway">gateway</option>
          </select>
        </Field>
        {r === "application" && (
          <Field
            label="Agent id"
            error={issueAt(error, "agent")}
            hint="its agent's --id (default: the host name); a standby server has the id of the server it protects"
          >
            <input name="host-agent" value={agent} onInput={(e) => setAgent(e.currentTarget.value)} />
          </Field>
        )}
        <Field label="Address (optional)" error={issueAt(error, "address")}>
          <input name="host-address" value={address} onInput={(e) => setAddress(e.currentTarget.value)} />
        </Field>
      </div>
      <ErrorBox
        error={error}
        fields={{ name: "Host name", site: "Site", role: "Role", agent: "Agent id", address: "Address" }}
      />
      <div>
        <button type="submit" disabled={busy}>Add host</button>
      </div>
    </form>
  );
}

export function VolumeForm({ hosts, onCreated }: { hosts: Host[]; onCreated: (v: Volume) => void }) {
  const [chosen, setHost] = useState("");
  const host = hosts.some((h) => h.name === chosen) ? chosen : (hosts[0]?.name ?? "");
  const [device, setDevice] = useState("");
  const [size, setSize] = useState("");
  const [name, setName] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const sizeBytes = parseSize(size);
  const sizeWrong = sizeProblem(size, { positive: true, sectors: true });
  const autoName = `${host}-${device.split("/").filter(Boolean).pop() ?? ""}`.replace(/[^A-Za-z0-9._-]/g, "_")
    .slice(0, 64);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const v = await post<Volume>("/api/volumes", {
        name: name || autoName,
        host,
        device,
        size: Number.isFinite(sizeBytes) ? sizeBytes : size,
      });
      setDevice("");
      setName("");
      onCreated(v);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (hosts.length === 0) return <Empty>Add a host first.</Empty>;
  return (
    <form class="stack" onSubmit={submit} aria-label="register a volume">
      <div class="fields">
        <Field label="Host" error={issueAt(error, "host")}>
          <select name="volume-host" value={host} onChange={(e) => setHost(e.currentTarget.value)}>
            {hosts.map((h) => <option key={h.name} value={h.name}>{h.name} ({h.site}, {h.role})</option>)}
          </select>
        </Field>
        <Field
          label="Device path"
          error={issueAt(error, "device")}
          hint="e.g. /dev/vg0/data or an image file"
        >
          <input
            name="volume-device"
            required
            value={device}
            onInput={(e) => setDevice(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="Size"
          error={sizeWrong ?? issueAt(error, "size")}
          hint={Number.isFinite(sizeBytes) && !sizeWrong ? `${sizeBytes} bytes` : "e.g. 10G, 512M"}
        >
          <input
            name="volume-size"
            required
            value={size}
            aria-invalid={sizeWrong ? "true" : undefined}
            onInput={(e) => setSize(e.currentTarget.value)}
          />
        </Field>
        <Field label="Name" error={issueAt(error, "name")} hint={`default: ${autoName}`}>
          <input
            name="volume-name"
            value={name}
            placeholder={autoName}
            onInput={(e) => setName(e.currentTarget.value)}
          />
        </Field>
      </div>
      <ErrorBox error={error} fields={{ host: "Host", device: "Device path", size: "Size", name: "Name" }} />
      <div class="row">
        <button
          type="submit"
          disabled={busy || sizeWrong !== undefined}
          title={sizeWrong ? `Size ${sizeWrong}` : undefined}
        >
          Register volume
        </button>
        {sizeWrong && <span class="small muted">Correct the size first.</span>}
      </div>
    </form>
  );
}

function DeleteButton({ what, path, onDone }: { what: string; path: string; onDone: () => void }) {
  const [open, setOpen] = useState(false);
  if (!isAdmin()) return null;
  return (
    <>
      <button type="button" onClick={() => setOpen(true)} aria-label={`delete ${what}`}>Delete</button>
      {open && (
        <ConfirmDialog
          title={`Delete ${what}?`}
          confirmLabel="Delete"
          danger
          onConfirm={async () => {
            await del(path);
            onDone();
          }}
          onClose={() => setOpen(false)}
        >
          <p>This cannot be undone. Anything still in use is refused.</p>
        </ConfirmDialog>
      )}
    </>
  );
}

export function InventoryPage() {
  const sites = useResource<(Site & Stored)[]>("/api/sites");
  const hosts = useResource<(Host & Stored)[]>("/api/hosts");
  const volumes = useResource<(Volume & Stored)[]>("/api/volumes");
  const reload = () => {
    sites.reload();
    hosts.reload();
    volumes.reload();
  };
  // discovered things come and age: the lists follow them
  useEffect(() => {
    const t = setInterval(reload, 5000);
    return () => clearInterval(t);
  }, []);
  const admin = isAdmin();
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Inventory</h1>
      </div>
      <section class="panel" aria-labelledby="h-sites">
        <h2 id="h-sites">Sites (centers)</h2>
        {sites.loading && !sites.data && <Loading what="sites" />}
        <ErrorBox error={sites.error} retry={sites.reload} />
        {sites.data?.length === 0 && <Empty>No site yet.</Empty>}
        {sites.data && sites.data.length > 0 && (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Role</th>
                  <th>Found</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {sites.data.map((s) => (
                  <tr key={s.name} data-site={s.name}>
                    <td>{s.name}</td>
                    <td>{s.role}</td>
                    <td>
                      <Found item={s} />
                    </td>
                    <td>
                      <DeleteButton
                        what={`site ${s.name}`}
                        path={`/api/sites/${encodeURIComponent(s.name)}`}
                        onDone={reload}
                      />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {admin && (
          <>
            <h3>Add a site</h3>
            <SiteForm onCreated={reload} />
          </>
        )}
      </section>
      <section class="panel" aria-labelledby="h-hosts">
        <h2 id="h-hosts">Hosts</h2>
        {hosts.loading && !hosts.data && <Loading what="hosts" />}
        <ErrorBox error={hosts.error} retry={hosts.reload} />
        {hosts.data?.length === 0 && <Empty>No host yet.</Empty>}
        {hosts.data && hosts.data.length > 0 && (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Site</th>
                  <th>Role</th>
                  <th>Agent</th>
                  <th>Address</th>
                  <th>Found</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {hosts.data.map((h) => (
                  <tr key={h.name} data-host={h.name}>
                    <td>{h.name}</td>
                    <td>{h.site}</td>
                    <td>{h.role}</td>
                    <td class="mono">{h.role === "application" ? h.agent ?? h.name : "—"}</td>
                    <td>{h.address ?? "—"}</td>
                    <td>
                      <Found item={h} />
                    </td>
                    <td>
                      <DeleteButton
                        what={`host ${h.name}`}
                        path={`/api/hosts/${encodeURIComponent(h.name)}`}
                        onDone={reload}
                      />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {admin && sites.data && (
          <>
            <h3>Add a host</h3>
            <HostForm sites={sites.data} onCreated={reload} />
          </>
        )}
      </section>
      <section class="panel" aria-labelledby="h-volumes">
        <h2 id="h-volumes">Volumes (partitions)</h2>
        {volumes.loading && !volumes.data && <Loading what="volumes" />}
        <ErrorBox error={volumes.error} retry={volumes.reload} />
        {volumes.data?.length === 0 && <Empty>No volume yet.</Empty>}
        {volumes.data && volumes.data.length > 0 && (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Host</th>
                  <th>Device</th>
                  <th class="num">Size</th>
                  <th>Found</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {volumes.data.map((v) => (
                  <tr key={v.name} data-volume={v.name}>
                    <td>{v.name}</td>
                    <td>{v.host}</td>
                    <td class="mono">{v.device}</td>
                    <td class="num">{bytes(v.size)}</td>
                    <td>
                      <Found item={v} />
                    </td>
                    <td>
                      <DeleteButton
                        what={`volume ${v.name}`}
                        path={`/api/volumes/${encodeURIComponent(v.name)}`}
                        onDone={reload}
                      />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {admin && hosts.data && (
          <>
            <h3>Register a volume</h3>
            <VolumeForm hosts={hosts.data} onCreated={reload} />
          </>
        )}
      </section>
    </>
  );
}
