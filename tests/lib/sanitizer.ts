// Under the sanitizer pass of tests/run.ts this process starts with the AddressSanitizer and
// UndefinedBehaviorSanitizer runtimes preloaded (it loads the sanitized library itself). The
// roles it starts get them too (RoleProcess); the tools it runs (qemu-io, fio, nbdfuse, ...)
// must not: a preloaded ASan breaks programs that switch stacks, such as qemu's coroutines.
export const sanitizerPreload = Deno.env.get("CONTINUUM_SANITIZER_PRELOAD");
if (sanitizerPreload) Deno.env.delete("LD_PRELOAD");
