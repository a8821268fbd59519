// Command-line entry: `continuum --role ROLE [flags]`, `continuum keygen …`,
// `--version`, `--help`. Usage errors print one clear line and exit with code 2.
import { type FlagSpec, helpText, type Parsed, parseFlags, readConfigFile, UsageError } from "./flags.ts";
import { commonFlags, type RoleHandle } from "./common.ts";
import { notifyReady, notifyStopping } from "./notify.ts";
import { type Level, logger, setLogLevel } from "../log.ts";
import { VERSION } from "../version.ts";
import { agentFlags, runAgent } from "../roles/agent.ts";
import { localGatewayFlags, runLocalGateway } from "../roles/local-gateway.ts";
import { runRemoteGateway } from "../roles/remote-gateway.ts";
import { remoteGatewayFlags } from "../site/flags.ts";
import { keygenUsage, runKeygen } from "../transport/keygen-cli.ts";
import { runCtl } from "./ctl.ts";

interface RoleDef {
  summary: string;
  flags: FlagSpec[];
  run: (p: Parsed) => Promise<RoleHandle>;
}

export const roles: Record<string, RoleDef> = {
  agent: {
    summary: "export protected volumes over NBD and forward every write to the local gateway",
    flags: agentFlags,
    run: runAgent,
  },
  "local-gateway": {
    summary: "journal writes, keep a mirror, forward to remote sites, detect failures, serve the web UI",
    flags: localGatewayFlags,
    run: runLocalGateway,
  },
  "remote-gateway": {
    summary: "receive a site's stream, replay it onto the replicas and standby servers, acknowledge",
    flags: remoteGatewayFlags,
    run: runRemoteGateway,
  },
};

const generalHelp = () =>
  `Continuum ${VERSION}: disaster tolerance with service continuity.

Usage:
  continuum --role ROLE [flags]     run a role (ROLE: ${Object.keys(roles).join(", ")})
  continuum --role ROLE --help      the role's flags with their defaults
  continuum keygen --dir DIR        make this site's key pair and print its fingerprint
  continuum ctl COMMAND             operator commands against a gateway (ctl --help)
  continuum --version

Roles:
${Object.entries(roles).map(([n, r]) => `  ${n.padEnd(16)}${r.summary}`).join("\n")}
`;

function roleOf(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--role") return args[i + 1] ?? "";
    if (args[i].startsWith("--role=")) return args[i].slice(7);
  }
  return undefined;
}

function configOf(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--config") return args[i + 1];
    if (args[i].startsWith("--config=")) return args[i].slice(9);
  }
  return undefined;
}

/** Runs the command line; resolves with the process exit code. */
export async function main(args: string[]): Promise<number> {
  try {
    if (args.length === 1 && (args[0] === "--version" || args[0] === "version")) {
      console.log(`continuum ${VERSION}`);
      return 0;
    }
    if (args[0] === "ctl") return await runCtl(args.slice(1));
    if (args[0] === "keygen") {
      if (args.includes("--help")) {
        console.log(keygenUsage);
        return 0;
      }
      await runKeygen(args.slice(1));
      return 0;
    }
    const role = roleOf(args);
    if (role === undefined) {
      if (args.length === 0 || args.includes("--help") || args.includes("-h")) {
        console.log(generalHelp());
        return args.length === 0 ? 2 : 0;
      }
      throw new UsageError(`no --role given (one of ${Object.keys(roles).join(", ")}); see --help`);
    }
    const def = roles[role];
    if (!def) throw new UsageError(`unknown role "${role}" (one of ${Object.keys(roles).join(", ")})`);
    const specs = [...commonFlags, ...def.flags];
    if (args.includes("--help") || args.includes("-h")) {
      console.log(
        helpText(`continuum --role ${role}: ${def.summary}`, `continuum --role ${role} [flags]`, specs),
      );
      return 0;
    }
    const configPath = configOf(args);
    const parsed = parseFlags(specs, args, configPath ? readConfigFile(configPath) : {});
    setLogLevel(parsed["log-level"] as Level);
    const handle = await def.run(parsed);
    notifyReady(`${role} serving`);
    const ends: Promise<Error | undefined>[] = [waitForSignal().then(() => undefined)];
    if (handle.fatal) ends.push(handle.fatal.catch((e: Error) => e));
    const fatal = await Promise.race(ends);
    logger("main").info("stopping", { role, reason: fatal?.message ?? "signal" });
    notifyStopping();
    await handle.stop();
    if (fatal) {
      console.error(`continuum: ${fatal.message}`);
      return 1;
    }
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`continuum: ${e.message}`);
      return 2;
    }
    logger("main").error("cannot start", { error: (e as Error).message });
    console.error(`continuum: ${(e as Error).message}`);
    return 1;
  }
}

function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      Deno.removeSignalListener("SIGINT", done);
      Deno.removeSignalListener("SIGTERM", done);
      resolve();
    };
    Deno.addSignalListener("SIGINT", done);
    Deno.addSignalListener("SIGTERM", done);
  });
}
