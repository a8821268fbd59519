/** Resolves as p does, or rejects with `what` (evaluated then) once ms passed first. */
export function within<T>(p: Promise<T>, ms: number, what: string | (() => string)): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) =>
    timer = setTimeout(() => reject(new Error(typeof what === "string" ? what : what())), ms)
  );
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}
