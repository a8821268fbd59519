// The systemd units in deploy/systemd/ pass `systemd-analyze verify` exactly as
// committed: they are verified inside a temporary root (--root) that holds Debian's
// system units, a stand-in for /usr/local/bin/continuum and the config files the units
// name. The example configs are valid for their roles, and the units ask for what each
// role needs (Type=notify, its own user, capabilities only for the local gateway).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { run, tempDir } from "./lib/cluster.ts";
import { roles } from "../src/cli/main.ts";
import { commonFlags } from "../src/cli/common.ts";
import { parseFlags, readConfigFile } from "../src/cli/flags.ts";

const t = suite("deploy: systemd units and example configs");
const root = new URL("../", import.meta.url).pathname;
const unitDir = `${root}deploy/systemd`;
const configDir = `${root}deploy/config`;
const roleNames = ["agent", "local-gateway", "remote-gateway"];

function unitText(role: string): string {
  return Deno.readTextFileSync(`${unitDir}/continuum-${role}.service`);
}

/** Values of a key in a unit file (all sections). */
function values(text: string, key: string): string[] {
  return text.split("\n").filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
}

/** Where Debian keeps its system units (sysinit.target and friends). */
function systemUnitDir(): string {
  for (const d of ["/usr/lib/systemd/system", "/lib/systemd/system"]) {
    try {
      if (Deno.statSync(`${d}/sysinit.target`).isFile) return d;
    } catch { /* not here */ }
  }
  throw new Error("no sysinit.target in /usr/lib/systemd/system or /lib/systemd/system");
}

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    const src = `${from}/${e.name}`, dst = `${to}/${e.name}`;
    if (e.isSymlink) await Deno.symlink(await Deno.readLink(src), dst);
    else if (e.isDirectory) await copyDir(src, dst);
    else await Deno.copyFile(src, dst);
  }
}

t("the example configs are valid flag sets of their roles", () => {
  for (const role of roleNames) {
    const file = `${configDir}/${role}.example.json`;
    const parsed = parseFlags([...commonFlags, ...roles[role].flags], [], readConfigFile(file));
    assert.ok(parsed["data-dir"], `${role}: data-dir`);
    assert.is(parsed["log-level"], "info", `${role}: log-level`);
  }
});

t("each unit runs its role as a notify service with its config and data directory", () => {
  for (const role of roleNames) {
    const text = unitText(role);
    assert.equal(values(text, "Type"), ["notify"], `${role}: Type=notify`);
    assert.equal(
      values(text, "ExecStart"),
      [`/usr/local/bin/continuum --role ${role} --config /etc/continuum/${role}.json`],
      `${role}: ExecStart`,
    );
    const config = readConfigFile(`${configDir}/${role}.example.json`);
    const state = values(text, "StateDirectory")[0];
    assert.is(`/var/lib/${state}`, config["data-dir"], `${role}: StateDirectory is the data dir`);
    assert.equal(values(text, "User"), ["continuum"], `${role}: dedicated user`);
    assert.equal(values(text, "Restart"), ["on-failure"]);
    for (const k of ["NoNewPrivileges", "ProtectHome", "PrivateTmp"]) {
      assert.equal(values(text, k), ["yes"], `${role}: ${k}`);
    }
    assert.equal(values(text, "ProtectSystem"), ["strict"], `${role}: ProtectSystem`);
    assert.ok(
      values(text, "RuntimeDirectory").length === 1,
      `${role}: RuntimeDirectory for the native library`,
    );
    assert.equal(values(text, "RuntimeDirectoryMode"), ["0700"]);
    const caps = values(text, "CapabilityBoundingSet")[0];
    const families = values(text, "RestrictAddressFamilies")[0].split(" ");
    if (role === "local-gateway") {
      assert.is(
        caps,
        "CAP_NET_ADMIN CAP_NET_RAW",
        "the service switch needs CAP_NET_ADMIN (+ raw for legacy)",
      );
      assert.equal(values(text, "AmbientCapabilities"), ["CAP_NET_ADMIN CAP_NET_RAW"]);
      assert.ok(families.includes("AF_NETLINK"), "iptables-nft speaks netlink");
    } else {
      assert.is(caps, "", `${role}: no capabilities`);
      assert.not.ok(families.includes("AF_NETLINK"));
    }
    if (role === "agent") {
      assert.equal(values(text, "SupplementaryGroups"), ["disk"], "the agent opens its block devices");
      assert.equal(values(text, "DeviceAllow"), ["block-* rw"]);
    }
  }
});

t("systemd-analyze verify accepts every unit as committed", async () => {
  if (!need("systemd-analyze verify", { tools: ["systemd-analyze"] })) return;
  const systemUnits = systemUnitDir();
  for (const role of roleNames) {
    const unit = `continuum-${role}.service`;
    const text = unitText(role);
    const tmp = await tempDir(`systemd-${role}`);
    // the root verify works in: system units, the executables and files the unit names
    await copyDir(systemUnits, `${tmp}/usr/lib/systemd/system`);
    await Deno.mkdir(`${tmp}/etc/systemd/system`, { recursive: true });
    await Deno.copyFile(`${unitDir}/${unit}`, `${tmp}/etc/systemd/system/${unit}`);
    for (const line of values(text, "ExecStart")) {
      const exe = line.replace(/^[-@:+!]+/, "").split(" ")[0];
      await Deno.mkdir(`${tmp}${exe.slice(0, exe.lastIndexOf("/"))}`, { recursive: true });
      await Deno.writeTextFile(`${tmp}${exe}`, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
      const config = /--config (\S+)/.exec(line)?.[1];
      assert.ok(config, `${unit}: ExecStart names its config file`);
      await Deno.mkdir(`${tmp}${config.slice(0, config.lastIndexOf("/"))}`, { recursive: true });
      await Deno.copyFile(`${configDir}/${role}.example.json`, `${tmp}${config}`);
    }
    const r = await run("systemd-analyze", ["verify", `--root=${tmp}`, `${tmp}/etc/systemd/system/${unit}`], {
      allowFail: true,
    });
    const said = (r.stdout + r.stderr).trim();
    assert.is(r.code, 0, `${unit}: systemd-analyze verify exit code (${said})`);
    // unknown keys and unparsable values are only warnings for verify: none allowed
    assert.is(said, "", `${unit}: systemd-analyze verify printed nothing`);
    await Deno.remove(tmp, { recursive: true });
  }
});

t("verify notices a broken unit (the check above can fail)", async () => {
  if (!need("systemd-analyze verify", { tools: ["systemd-analyze"] })) return;
  const tmp = await tempDir("systemd-broken");
  await copyDir(systemUnitDir(), `${tmp}/usr/lib/systemd/system`);
  await Deno.mkdir(`${tmp}/etc/systemd/system`, { recursive: true });
  const unit = `${tmp}/etc/systemd/system/continuum-agent.service`;
  // no /usr/local/bin/continuum in this root, and one misspelt key
  await Deno.writeTextFile(unit, unitText("agent").replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"));
  const r = await run("systemd-analyze", ["verify", `--root=${tmp}`, unit], { allowFail: true });
  const said = r.stdout + r.stderr;
  assert.match(said, /is not executable/);
  assert.match(said, /Unknown key/);
  await Deno.remove(tmp, { recursive: true });
});

t.run();
