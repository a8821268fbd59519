// `continuum ctl …`: the operator's commands against a gateway's API.
import { parseArgs } from "node:util";
import { UsageError } from "./flags.ts";

export const ctlUsage = `continuum ctl [--api URL] [--token-file FILE] COMMAND [ARGS]
  status                  the gateway's status (JSON)
  services                protected services and their state
  failover SERVICE [--point SEQ|NAME]
                          move SERVICE to its remote site now (--point: its standby rolled back to
                          that recovery point first)
  failback SERVICE [--traffic-only]
                          bring SERVICE's data back from its site, then its traffic (waits until
                          done; --traffic-only: only remove the switch rule)
  audit [--limit N]       the newest audit log entries
  candidates VOLUME [--seq N | --time ISO] [--strategy fast|full]
                          recovery sources of VOLUME (AGENT/NAME), assessed, and the policy's choice
  recover VOLUME --source lgp|rgp@SITE|rsp@SITE [--also SOURCE]... [--strategy fast|full] [--target lsp|lgp]
          [--force] [--at WHEN] [--method auto|scan|tracked] [--verify moved|full]
          [--point SEQ|NAME]  (with rgp@SITE: the site's replica at that recovery point)
  recover VOLUME --policy [--seq N | --time ISO] [--strategy fast|full] [--at WHEN] [--method M] [--verify V]
                          rebuild a copy of VOLUME; WHEN is an ISO time or +SECONDS (scheduled);
                          --also pulls from further copies at the same point at once; --method
                          tracked moves what was written since a common point (no scan), scan hashes
                          both ends, auto tracks when a common point is known; --verify full
                          re-hashes every chunk, not only those moved (and an audit sample)
  recoveries              recoveries: running, scheduled, finished, with each running one's progress
                          (method, sources and their shares, bytes to move, moved, rate, ETA)
  cancel ID               cancel a running or scheduled recovery
  drill TASK [--site SITE] [--at WHEN [--every HOURS]]
                          a failover drill of TASK: its service brought up on a test copy at a remote
                          site, RTO and RPO graded (waits for the grade; exit code 1 when it fails);
                          --at schedules it, --every repeats it
  drills [TASK]           the drills and their grades, newest first
  points TASK [--site SITE] [--limit N]
                          the recovery points each remote site holds of TASK's volume, its
                          retention window and the named checkpoints
  checkpoint TASK NAME    name the newest point of TASK's volume at every remote site
  test TASK [--site SITE] [--point SEQ|NAME]
                          a failover test copy of TASK's volume, now or at a recovery point
  test-done TASK          end TASK's failover test (its copy is discarded)
  search TASK [--site SITE] [--good SEQ|NAME] [--timeout SECONDS] -- CHECK [ARG...]
                          find the last point where CHECK passes (bisecting the site's points,
                          each on a test copy; "{uri}" and $CONTINUUM_NBD_URI are its NBD URI)
  detector                each agent link's detector: targets, settings, predicted and observed QoS
The API token is read from --token-file (default /var/lib/continuum/gateway/api-token)
or the CONTINUUM_TOKEN environment variable; --api defaults to http://127.0.0.1:7880.`;

export async function runCtl(args: string[], print: (s: string) => void = console.log): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        api: { type: "string", default: "http://127.0.0.1:7880" },
        "token-file": { type: "string", default: "/var/lib/continuum/gateway/api-token" },
        limit: { type: "string" },
        source: { type: "string" },
        also: { type: "string", multiple: true },
        method: { type: "string" },
        verify: { type: "string" },
        strategy: { type: "string", default: "fast" },
        target: { type: "string", default: "lsp" },
        policy: { type: "boolean", default: false },
        force: { type: "boolean", default: false },
        "traffic-only": { type: "boolean", default: false },
        seq: { type: "string" },
        time: { type: "string" },
        at: { type: "string" },
        site: { type: "string" },
        every: { type: "string" },
        point: { type: "string" },
        good: { type: "string" },
        timeout: { type: "string" },
        help: { type: "boolean", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n\n${ctlUsage}`);
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    print(ctlUsage);
    return values.help ? 0 : 2;
  }
  let token = Deno.env.get("CONTINUUM_TOKEN");
  if (!token) {
    try {
      token = (await Deno.readTextFile(values["token-file"]!)).trim();
    } catch (e) {
      throw new UsageError(`cannot read the API token from ${values["token-file"]}: ${(e as Error).message}`);
    }
  }
  const [cmd, arg, arg2] = positionals;
  const need = (what: string) => {
    if (!arg) throw new UsageError(`ctl ${cmd}: ${what} is required\n\n${ctlUsage}`);
    return encodeURIComponent(arg);
  };
  let method = "GET", path: string, body: unknown;
  const when = (text: string | undefined, what: string): number | undefined => {
    if (!text) return undefined;
    const t = text.startsWith("+") ? Date.now() + Number(text.slice(1)) * 1000 : Date.parse(text);
    if (!Number.isFinite(t)) {
      throw new UsageError(`ctl ${cmd}: ${what} "${text}" is not a time (ISO 8601 or +SECONDS)`);
    }
    return t;
  };
  const point = () => ({
    seq: values.seq !== undefined ? Number(values.seq) : undefined,
    time: when(values.time, "--time"),
  });
  switch (cmd) {
    case "status":
      path = "/api/status";
      break;
    case "services":
      path = "/api/services";
      break;
    case "audit":
      path = `/api/audit?limit=${Number(values.limit ?? 50) || 50}`;
      break;
    case "candidates": {
      const p = point();
      const q = new URLSearchParams({ volume: arg ?? "", strategy: values.strategy ?? "fast" });
      if (p.seq !== undefined) q.set("seq", String(p.seq));
      if (p.time !== undefined) q.set("time", String(p.time));
      need("VOLUME");
      path = `/api/recovery-candidates?${q}`;
      break;
    }
    case "recover":
      need("VOLUME");
      method = "POST";
      path = "/api/recoveries";
      body = {
        volume: arg,
        mode: values.policy ? "policy" : "manual",
        strategy: values.strategy,
        target: values.target,
        source: values.policy ? undefined : values.source,
        sourcePoint: values.point === undefined
          ? undefined
          : /^\d+$/.test(values.point)
          ? Number(values.point)
          : values.point,
        point: values.policy ? point() : undefined,
        force: values.force,
        at: when(values.at, "--at"),
        method: values.method,
        also: values.also,
        verify: values.verify,
      };
      break;
    case "recoveries":
      path = "/api/recoveries";
      break;
    case "cancel":
      method = "DELETE";
      path = `/api/recoveries/${need("ID")}`;
      break;
    case "drill": {
      need("TASK");
      method = "POST";
      const at = when(values.at, "--at");
      const every = values.every === undefined ? undefined : Number(values.every);
      if (every !== undefined && !(every > 0)) {
        throw new UsageError(`ctl drill: --every "${values.every}" is not a number of hours`);
      }
      path = `/api/tasks/${need("TASK")}/drills${at === undefined ? "?wait=1" : ""}`;
      body = { site: values.site, at, everyHours: every };
      break;
    }
    case "drills":
      path = arg ? `/api/tasks/${need("TASK")}/drills` : "/api/drills";
      break;
    case "detector":
      path = "/api/detector";
      break;
    case "points": {
      const q = new URLSearchParams();
      if (values.site) q.set("site", values.site);
      if (values.limit) q.set("limit", values.limit);
      path = `/api/tasks/${need("TASK")}/points?${q}`;
      break;
    }
    case "checkpoint":
      method = "POST";
      path = `/api/tasks/${need("TASK")}/checkpoints`;
      if (!arg2) throw new UsageError(`ctl checkpoint: NAME is required\n\n${ctlUsage}`);
      body = { name: arg2 };
      break;
    case "test": {
      method = "POST";
      path = `/api/tasks/${need("TASK")}/actions/failover-test`;
      const p = values.point;
      body = { site: values.site, point: p === undefined ? undefined : /^\d+$/.test(p) ? Number(p) : p };
      break;
    }
    case "search": {
      method = "POST";
      path = `/api/tasks/${need("TASK")}/point-search`;
      const check = positionals.slice(2);
      if (check.length === 0) {
        throw new UsageError(`ctl search: the check command is required\n\n${ctlUsage}`);
      }
      const g = values.good;
      body = {
        site: values.site,
        good: g === undefined ? undefined : /^\d+$/.test(g) ? Number(g) : g,
        check,
        timeoutSeconds: values.timeout === undefined ? undefined : Number(values.timeout),
      };
      break;
    }
    case "test-done":
      method = "POST";
      path = `/api/tasks/${need("TASK")}/actions/end-test`;
      body = {};
      break;
    case "failover":
      method = "POST";
      path = `/api/services/${need("SERVICE")}/failover`;
      if (values.point !== undefined) {
        body = { point: /^\d+$/.test(values.point) ? Number(values.point) : values.point };
      }
      break;
    case "failback":
      method = "POST";
      path = `/api/services/${need("SERVICE")}/failback?${
        values["traffic-only"] ? "traffic-only=1" : "wait=1"
      }`;
      break;
    default:
      throw new UsageError(`ctl: unknown command "${cmd}"\n\n${ctlUsage}`);
  }
  let r: Response;
  try {
    r = await fetch(new URL(path, values.api), {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    print(`continuum ctl: cannot reach ${values.api}: ${(e as Error).message}`);
    return 1;
  }
  const answer = await r.text();
  print(answer);
  // a drill that failed its grade fails the command too (for scripts and schedulers)
  if (r.ok && cmd === "drill" && (JSON.parse(answer) as { status?: string }).status === "failed") return 1;
  return r.ok ? 0 : 1;
}
