// Unit tests of the declarative flag parser (src/cli/flags.ts) and the shared
// helpers of src/cli/common.ts.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  type FlagSpec,
  helpText,
  parseDuration,
  parseFlags,
  parseSize,
  readConfigFile,
  UsageError,
} from "../src/cli/flags.ts";
import { commonFlags, list, optStr, pairs, str } from "../src/cli/common.ts";

const specs: FlagSpec[] = [
  { name: "listen", type: "string", description: "address to listen on", default: "127.0.0.1:7000" },
  { name: "buffer-size", type: "size", description: "journal buffer size", default: "64M" },
  { name: "interval", type: "duration", description: "heartbeat interval", default: "100ms" },
  { name: "workers", type: "number", description: "worker count", default: 4 },
  { name: "verbose", type: "boolean", description: "talk more", default: false },
  { name: "quiet", type: "boolean", description: "talk less" },
  { name: "peer", type: "string", description: "a peer", multiple: true, placeholder: "HOST:PORT" },
  {
    name: "volume",
    type: "string",
    description: "a volume",
    multiple: true,
    default: ["a=/dev/a", "b=/dev/b"],
  },
  { name: "mode", type: "string", description: "mode", choices: ["sync", "async"], default: "async" },
  { name: "name", type: "string", description: "this node's name" },
  { name: "timeouts", type: "duration", description: "timeouts", multiple: true },
];

/** Runs fn and returns the UsageError it throws (fails when it throws nothing or something else). */
function usageError(fn: () => unknown): UsageError {
  try {
    fn();
  } catch (e) {
    assert.instance(e, UsageError, `expected a UsageError, got ${e}`);
    return e as UsageError;
  }
  assert.unreachable("expected a UsageError");
  throw new Error("unreachable");
}

// ---------------------------------------------------------------------------
const sizes = suite("parseSize");

sizes("plain byte counts", () => {
  assert.is(parseSize("0"), 0);
  assert.is(parseSize("4096"), 4096);
  assert.is(parseSize(" 512 "), 512);
});

sizes("binary units, any case, with optional B / iB suffix", () => {
  assert.is(parseSize("1k"), 1024);
  assert.is(parseSize("1K"), 1024);
  assert.is(parseSize("64M"), 64 * 1024 * 1024);
  assert.is(parseSize("64m"), 64 * 1024 * 1024);
  assert.is(parseSize("1G"), 1024 ** 3);
  assert.is(parseSize("2T"), 2 * 1024 ** 4);
  assert.is(parseSize("64MB"), 64 * 1024 * 1024);
  assert.is(parseSize("64MiB"), 64 * 1024 * 1024);
  assert.is(parseSize("64 M"), 64 * 1024 * 1024);
  assert.is(parseSize("10b"), 10);
});

sizes("fractions are rounded to whole bytes", () => {
  assert.is(parseSize("1.5g"), 1.5 * 1024 ** 3);
  assert.is(parseSize("0.5k"), 512);
  assert.is(parseSize("1.0001k"), 1024);
});

sizes("garbage is a UsageError naming the text", () => {
  for (const bad of ["", "M", "-1", "-1M", "1X", "1MM", "1.2.3", "one", "1e3", "0x10", "1 G B", "1Mi"]) {
    const e = usageError(() => parseSize(bad));
    assert.ok(e.message.includes(`"${bad}"`), e.message);
  }
});

// ---------------------------------------------------------------------------
const durations = suite("parseDuration");

durations("units and bare milliseconds", () => {
  assert.is(parseDuration("250"), 250);
  assert.is(parseDuration("100ms"), 100);
  assert.is(parseDuration("5s"), 5000);
  assert.is(parseDuration("2m"), 120_000);
  assert.is(parseDuration("1h"), 3_600_000);
  assert.is(parseDuration("30d"), 30 * 86_400_000, "days: a detector's mistake recurrence target");
  assert.is(parseDuration("1.5s"), 1500);
  assert.is(parseDuration(" 7 s "), 7000);
  assert.is(parseDuration("0"), 0);
});

durations("garbage is a UsageError", () => {
  for (const bad of ["", "s", "-5s", "5 sec", "5w", "1.2.3s", "abc", "5ss"]) {
    usageError(() => parseDuration(bad));
  }
});

// ---------------------------------------------------------------------------
const parse = suite("parseFlags");

parse("defaults apply and are converted by type", () => {
  const p = parseFlags(specs, []);
  assert.is(p.listen, "127.0.0.1:7000");
  assert.is(p["buffer-size"], 64 * 1024 * 1024);
  assert.is(p.interval, 100);
  assert.is(p.workers, 4);
  assert.is(p.verbose, false);
  assert.is(p.quiet, undefined);
  assert.equal(p.peer, []);
  assert.equal(p.volume, ["a=/dev/a", "b=/dev/b"]);
  assert.is(p.mode, "async");
  assert.is(p.name, undefined);
  assert.equal(p.timeouts, []);
});

parse("every type converts from the command line", () => {
  const p = parseFlags(specs, [
    "--listen",
    "0.0.0.0:9",
    "--buffer-size=1G",
    "--interval",
    "2s",
    "--workers",
    "16",
    "--verbose",
    "--mode",
    "sync",
    "--name=gw-1",
  ]);
  assert.is(p.listen, "0.0.0.0:9");
  assert.is(p["buffer-size"], 1024 ** 3);
  assert.is(p.interval, 2000);
  assert.is(p.workers, 16);
  assert.is(p.verbose, true);
  assert.is(p.mode, "sync");
  assert.is(p.name, "gw-1");
});

parse("repeatable flags collect every value in order and convert each", () => {
  const p = parseFlags(specs, [
    "--peer",
    "a:1",
    "--peer=b:2",
    "--peer",
    "c:3",
    "--timeouts",
    "1s",
    "--timeouts",
    "5",
  ]);
  assert.equal(p.peer, ["a:1", "b:2", "c:3"]);
  assert.equal(p.timeouts, [1000, 5]);
  // a bad element is reported
  usageError(() => parseFlags(specs, ["--timeouts", "1s", "--timeouts", "soon"]));
});

parse("config file values are used when no flag is given", () => {
  const p = parseFlags(specs, [], {
    listen: "10.0.0.1:1",
    "buffer-size": "2G",
    interval: "3s",
    workers: 8,
    verbose: true,
    peer: ["x:1", "y:2"],
    mode: "sync",
  });
  assert.is(p.listen, "10.0.0.1:1");
  assert.is(p["buffer-size"], 2 * 1024 ** 3);
  assert.is(p.interval, 3000);
  assert.is(p.workers, 8);
  assert.is(p.verbose, true);
  assert.equal(p.peer, ["x:1", "y:2"]);
  assert.is(p.mode, "sync");
  // untouched flags keep their defaults
  assert.equal(p.volume, ["a=/dev/a", "b=/dev/b"]);
});

parse("command-line flags win over the config file; a repeatable flag's list is replaced, not merged", () => {
  const p = parseFlags(
    specs,
    ["--listen", "1.1.1.1:1", "--workers", "2", "--peer", "cli:1", "--buffer-size", "1M"],
    { listen: "2.2.2.2:2", workers: 99, peer: ["cfg:1", "cfg:2"], "buffer-size": "1G", interval: "9s" },
  );
  assert.is(p.listen, "1.1.1.1:1");
  assert.is(p.workers, 2);
  assert.equal(p.peer, ["cli:1"]);
  assert.is(p["buffer-size"], 1024 * 1024);
  assert.is(p.interval, 9000, "config value still used where no flag overrides it");
});

parse("a boolean flag on the command line wins over false in the config", () => {
  const p = parseFlags(specs, ["--verbose"], { verbose: false, quiet: true });
  assert.is(p.verbose, true);
  assert.is(p.quiet, true);
});

parse(
  "config numbers are taken as bytes / milliseconds; a single value for a repeatable flag becomes a list",
  () => {
    const p = parseFlags(specs, [], {
      "buffer-size": 65536,
      interval: 250,
      peer: "solo:1",
      timeouts: [100, "2s"],
    });
    assert.is(p["buffer-size"], 65536);
    assert.is(p.interval, 250);
    assert.equal(p.peer, ["solo:1"]);
    assert.equal(p.timeouts, [100, 2000]);
  },
);

parse(
  "a negative or fractional byte size (or negative duration) is refused from the config file as from a flag",
  () => {
    usageError(() => parseFlags(specs, ["--buffer-size=-1"]));
    usageError(() => parseFlags(specs, [], { "buffer-size": "-1" }));
    usageError(() => parseFlags(specs, [], { interval: "-5" }));
    usageError(() => parseFlags(specs, [], { interval: -5 }));
    usageError(() => parseFlags(specs, [], { "buffer-size": -1 }));
    usageError(() => parseFlags(specs, [], { "buffer-size": 0.5 }));
  },
);

parse("unknown flags are UsageErrors (without parseArgs' positional-argument hint)", () => {
  const e = usageError(() => parseFlags(specs, ["--no-such-flag", "x"]));
  assert.ok(e.message.includes("no-such-flag"), e.message);
  assert.not.ok(/positional argument/.test(e.message), e.message);
  usageError(() => parseFlags(specs, ["-z"]));
});

parse("positional arguments and a missing value are UsageErrors", () => {
  usageError(() => parseFlags(specs, ["stray"]));
  usageError(() => parseFlags(specs, ["--listen"]));
  usageError(() => parseFlags(specs, ["--verbose=yes"]));
});

parse("unknown config keys are UsageErrors naming the key", () => {
  const e = usageError(() => parseFlags(specs, [], { listen: "x", "lisen": "typo" }));
  assert.ok(e.message.includes('"lisen"'), e.message);
  // an unknown key is refused even when a flag is given
  usageError(() => parseFlags(specs, ["--listen", "y"], { bogus: 1 }));
});

parse("wrongly typed values are UsageErrors", () => {
  usageError(() => parseFlags(specs, ["--workers", "many"]));
  usageError(() => parseFlags(specs, ["--workers", ""]));
  usageError(() => parseFlags(specs, ["--workers", "Infinity"]));
  usageError(() => parseFlags(specs, ["--buffer-size", "lots"]));
  usageError(() => parseFlags(specs, ["--interval", "soon"]));
  usageError(() => parseFlags(specs, [], { verbose: "true" }));
  usageError(() => parseFlags(specs, [], { workers: "eight" }));
  usageError(() => parseFlags(specs, [], { listen: { host: "x" } }));
  usageError(() => parseFlags(specs, [], { listen: null }));
  // a list for a single-valued flag
  usageError(() => parseFlags(specs, [], { listen: ["a", "b"] }));
});

parse("choices are enforced on flags, config and defaults", () => {
  const e = usageError(() => parseFlags(specs, ["--mode", "eventual"]));
  assert.ok(e.message.includes("sync") && e.message.includes("async"), e.message);
  usageError(() => parseFlags(specs, [], { mode: "eventual" }));
  const badDefault: FlagSpec[] = [{
    name: "m",
    type: "string",
    description: "m",
    choices: ["a"],
    default: "b",
  }];
  usageError(() => parseFlags(badDefault, []));
});

parse("a single-valued flag given twice: the last one wins", () => {
  const p = parseFlags(specs, ["--listen", "a:1", "--listen", "b:2"]);
  assert.is(p.listen, "b:2");
});

parse("the error names where the bad value came from", () => {
  assert.ok(usageError(() => parseFlags(specs, ["--workers", "x"])).message.includes("flag --workers"));
  assert.ok(
    usageError(() => parseFlags(specs, [], { workers: "x" })).message.includes("config file --workers"),
  );
});

// ---------------------------------------------------------------------------
const config = suite("readConfigFile");

config("reads a JSON object and refuses anything else", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-flags-" });
  try {
    const good = `${dir}/good.json`;
    Deno.writeTextFileSync(good, JSON.stringify({ listen: "1.2.3.4:5", peer: ["p:1"] }));
    const cfg = readConfigFile(good);
    assert.equal(cfg, { listen: "1.2.3.4:5", peer: ["p:1"] });
    assert.is(parseFlags(specs, ["--peer", "q:2"], cfg).listen, "1.2.3.4:5");
    for (
      const [name, text] of [["array", "[1,2]"], ["null", "null"], ["number", "3"], ["broken", "{listen:"]]
    ) {
      const p = `${dir}/${name}.json`;
      Deno.writeTextFileSync(p, text);
      usageError(() => readConfigFile(p));
    }
    const e = usageError(() => readConfigFile(`${dir}/missing.json`));
    assert.ok(e.message.includes("missing.json"), e.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
const help = suite("helpText");

help("lists every flag once, with its placeholder, default, choices and repeatability", () => {
  const text = helpText("Continuum test role", "continuum --role test [flags]", specs);
  assert.ok(text.startsWith("Continuum test role\n"));
  assert.ok(text.includes("Usage: continuum --role test [flags]"));
  const lines = text.split("\n");
  for (const s of specs) {
    const mine = lines.filter((l) => new RegExp(`^\\s+--${s.name}(\\s|$)`).test(l));
    assert.is(mine.length, 1, `one line for --${s.name}`);
    const line = mine[0];
    assert.ok(line.includes(s.description), `--${s.name} described`);
    if (s.default !== undefined && !(Array.isArray(s.default) && s.default.length === 0)) {
      const shown = Array.isArray(s.default) ? s.default.join(", ") : String(s.default);
      assert.ok(line.includes(`[default: ${shown}]`), `--${s.name} shows its default: ${line}`);
    } else if (s.type !== "boolean") {
      assert.ok(line.includes("[default: none]"), `--${s.name} says it has no default: ${line}`);
    }
    if (s.multiple) assert.ok(line.includes("[repeatable]"), line);
    else assert.not.ok(line.includes("[repeatable]"), line);
    if (s.choices) assert.ok(line.includes(`(${s.choices.join(" | ")})`), line);
  }
  assert.ok(/--peer HOST:PORT\s/.test(text), "placeholder used");
  assert.ok(/--buffer-size SIZE\s/.test(text), "type as placeholder");
  assert.ok(/--verbose\s+talk more/.test(text), "booleans take no argument");
});

help("descriptions start in one column", () => {
  const text = helpText("t", "u", specs);
  const cols = text.split("\n").filter((l) => l.startsWith("  --")).map((l) =>
    /^\s+--\S+(?: \S+)?\s+/.exec(l)![0].length
  );
  assert.is(new Set(cols).size, 1);
});

help("the shared flags document their defaults", () => {
  const text = helpText("t", "u", commonFlags);
  assert.ok(text.includes("[default: info]"));
  assert.ok(/--role STRING/.test(text));
  assert.ok(text.includes("agent | local-gateway | remote-gateway"));
  assert.ok(/--config FILE/.test(text));
});

// ---------------------------------------------------------------------------
const common = suite("common");

common("commonFlags parse with their defaults and choices", () => {
  const p = parseFlags(commonFlags, ["--role", "agent"]);
  assert.is(p.role, "agent");
  assert.is(p["log-level"], "info");
  assert.is(p.help, false);
  assert.is(p.config, undefined);
  usageError(() => parseFlags(commonFlags, ["--role", "spy"]));
  usageError(() => parseFlags(commonFlags, ["--log-level", "chatty"]));
});

common("pairs splits NAME=VALUE at the first '='", () => {
  const m = pairs("volume", ["db=/dev/sdb", "logs=/srv/a=b", "x.y_z-1=v"]);
  assert.equal([...m.entries()], [["db", "/dev/sdb"], ["logs", "/srv/a=b"], ["x.y_z-1", "v"]]);
  assert.is(pairs("volume", undefined).size, 0);
  assert.is(pairs("volume", []).size, 0);
});

common("pairs refuses malformed entries, bad names and duplicates", () => {
  for (const bad of ["novalue", "=x", "name=", "", "sp ace=1", "slash/x=1", "ü=1", "a".repeat(65) + "=1"]) {
    const e = usageError(() => pairs("volume", [bad]));
    assert.ok(e.message.includes("--volume"), e.message);
  }
  assert.is(pairs("volume", ["a".repeat(64) + "=1"]).size, 1);
  const e = usageError(() => pairs("peer", ["a=1", "b=2", "a=3"]));
  assert.ok(e.message.includes('"a"'), e.message);
});

common("str / optStr / list read parsed values", () => {
  const p = parseFlags(specs, ["--name", "n1", "--peer", "p:1"]);
  assert.is(str(p, "name"), "n1");
  assert.is(optStr(p, "name"), "n1");
  assert.equal(list(p, "peer"), ["p:1"]);
  const q = parseFlags(specs, []);
  usageError(() => str(q, "name"));
  assert.is(optStr(q, "name"), undefined);
  const r = parseFlags(specs, ["--name="]);
  usageError(() => str(r, "name"));
  assert.is(optStr(r, "name"), undefined);
});

sizes.run();
durations.run();
parse.run();
config.run();
help.run();
common.run();
