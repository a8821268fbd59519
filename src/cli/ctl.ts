// `continuum ctl …`: the operator's commands against a gateway's API.
import { parseArgs } from "node:util";
import { UsageError } from "./flags.ts";

export const ctlUsage = `continuum ctl [--api URL] [--token-file FILE] COMMAND [ARGS]
  status                  the gateway's status (JSON)
  services                protected services and their state
  failover SERVICE        move SERVICE to its remote site now
  failback SERVICE        send SERVICE's traffic back to the local server
  audit [--limit N]       the newest audit log entries
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
  const [cmd, arg] = positionals;
  const need = (what: string) => {
    if (!arg) throw new UsageError(`ctl ${cmd}: ${what} is required\n\n${ctlUsage}`);
    return encodeURIComponent(arg);
  };
  let method = "GET", path: string;
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
    case "failover":
    case "failback":
      method = "POST";
      path = `/api/services/${need("SERVICE")}/${cmd}`;
      break;
    default:
      throw new UsageError(`ctl: unknown command "${cmd}"\n\n${ctlUsage}`);
  }
  let r: Response;
  try {
    r = await fetch(new URL(path, values.api), { method, headers: { authorization: `Bearer ${token}` } });
  } catch (e) {
    print(`continuum ctl: cannot reach ${values.api}: ${(e as Error).message}`);
    return 1;
  }
  const body = await r.text();
  print(body);
  return r.ok ? 0 : 1;
}
