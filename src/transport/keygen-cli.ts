// `continuum keygen`: creates this site's identity (or shows an existing one) and
// prints, as key=value lines, the fingerprint that peer sites must pin.
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { UsageError } from "../cli/flags.ts";
import { generateIdentity, identityPaths, loadIdentity } from "./identity.ts";

export const keygenUsage = `continuum keygen --dir DIR [--name SITE] [--force]
  Creates this site's key pair (DIR/key.pem, mode 0600) and self-signed certificate
  (DIR/cert.pem) and prints the fingerprint to give to peer sites. An existing
  identity is kept unless --force (which changes the fingerprint). SITE defaults to
  the host name.
continuum keygen --show --dir DIR
  Prints the fingerprint of the existing identity in DIR.`;

export async function runKeygen(args: string[], print: (line: string) => void = console.log): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        dir: { type: "string" },
        name: { type: "string" },
        force: { type: "boolean", default: false },
        show: { type: "boolean", default: false },
        help: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UsageError(
      `${(e as Error).message.replace(/\. To specify a positional argument.*$/s, "")}\n\n${keygenUsage}`,
    );
  }
  if (values.help) return print(keygenUsage);
  if (!values.dir) throw new UsageError(`keygen: --dir is required\n\n${keygenUsage}`);
  if (values.show && (values.force || values.name !== undefined)) {
    throw new UsageError("keygen: --show takes only --dir");
  }
  const identity = values.show
    ? await loadIdentity(values.dir)
    : await generateIdentity(values.dir, { name: values.name ?? Deno.hostname(), force: values.force });
  const paths = identityPaths(resolve(values.dir));
  print(`fingerprint=${identity.fingerprint}`);
  print(`name=${identity.name}`);
  print(`cert=${paths.cert}`);
  print(`key=${paths.key}`);
  print(
    "# Give the fingerprint value to each peer site for its trusted peers; key.pem never leaves this machine.",
  );
}
