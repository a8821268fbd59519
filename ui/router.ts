// Path routing with the History API: `route` is the current path; links with data-nav go
// through navigate() (no reload); the server answers index.html for every page path.
import { signal } from "@preact/signals";

export const route = signal(location.pathname + location.search);

export function navigate(to: string, replace = false): void {
  if (to === route.value) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  route.value = to;
  // the new page's heading takes the focus (screen readers announce it; the keyboard starts there)
  queueMicrotask(() => requestAnimationFrame(() => document.querySelector<HTMLElement>("main h1")?.focus()));
}

addEventListener("popstate", () => route.value = location.pathname + location.search);

/** Intercepts clicks on same-origin links (unless a modifier key asks for a new tab). */
addEventListener("click", (e) => {
  const a = (e.target as HTMLElement | null)?.closest?.("a");
  if (!a || a.target || a.hasAttribute("download") || e.defaultPrevented) return;
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname === "/metrics") {
    return;
  }
  e.preventDefault();
  navigate(url.pathname + url.search);
});

/** Matches `pattern` (`/tasks/:name`) against a path; the params or undefined. */
export function match(pattern: string, path: string): Record<string, string> | undefined {
  const p = pattern.split("/"), q = path.split("?")[0].split("/");
  if (p.length !== q.length) return undefined;
  const out: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(":")) out[p[i].slice(1)] = decodeURIComponent(q[i]);
    else if (p[i] !== q[i]) return undefined;
  }
  return out;
}

export function query(name: string): string | null {
  return new URLSearchParams(route.value.split("?")[1] ?? "").get(name);
}
