// Environment checks for tests. A test that needs root, network namespaces, FUSE or
// a tool calls need(); outside CI it is skipped with the printed reason, under
// CI=true the missing prerequisite is a failure.
export const inCI = Deno.env.get("CI") === "true";

export function which(cmd: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return true;
    } catch { /* not here */ }
  }
  return false;
}

/** Returns a reason when a prerequisite is missing, or undefined when all are there. */
export function missing(opts: { root?: boolean; tools?: string[]; fuse?: boolean }): string | undefined {
  if (opts.root && Deno.uid() !== 0) return "needs root";
  for (const t of opts.tools ?? []) if (!which(t)) return `needs ${t}`;
  if (opts.fuse) {
    try {
      Deno.statSync("/dev/fuse");
    } catch {
      return "needs /dev/fuse";
    }
  }
  return undefined;
}

/**
 * True when the test may run. Prints the reason it is skipped otherwise; under
 * CI=true a missing prerequisite throws so the test fails instead.
 */
export function need(name: string, opts: { root?: boolean; tools?: string[]; fuse?: boolean }): boolean {
  const why = missing(opts);
  if (!why) return true;
  if (inCI) throw new Error(`${name}: ${why} (prerequisites are required when CI=true)`);
  console.log(`\nSKIP ${name}: ${why}`);
  return false;
}
