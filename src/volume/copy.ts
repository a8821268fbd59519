// Copies of whole images (failover test copies, retention base images).

/**
 * Copies an image: a reflink where the filesystem shares blocks
 * (XFS, btrfs: instant), else a copy of the allocated data only (holes stay holes).
 */
export async function copyImage(from: string, to: string): Promise<void> {
  const out = await new Deno.Command("cp", {
    args: ["--reflink=auto", "--sparse=always", "--", from, to],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `cannot copy ${from}: ${new TextDecoder().decode(out.stderr).trim() || `cp ${out.code}`}`,
    );
  }
}
