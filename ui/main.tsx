// Continuum's web UI (preact + signals): nothing but the login (or first-start setup) page
// until /api/session says who is logged in; then the dashboard, tasks, the task wizard, task
// and recovery pages, the inventory and access, all fed live by /api/events.
import { render } from "preact";
import { useEffect } from "preact/hooks";
import { css } from "./styles.ts";
import { api, isAdmin, loadSession, session } from "./api.ts";
import { connect, disconnect } from "./live.ts";
import { match, navigate, route } from "./router.ts";
import { ErrorBox, Loading } from "./components.tsx";
import { LoginPage, Logo, SetupPage } from "./pages/login.tsx";
import { DashboardPage, LiveDot } from "./pages/dashboard.tsx";
import { TaskPage, TasksPage } from "./pages/task.tsx";
import { WizardPage } from "./pages/wizard.tsx";
import { RecoveryPage } from "./pages/recovery.tsx";
import { InventoryPage } from "./pages/inventory.tsx";
import { AccessPage } from "./pages/users.tsx";
import { signal } from "@preact/signals";

const sheet = new CSSStyleSheet();
sheet.replaceSync(css);
document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];

const startError = signal<unknown>(undefined);

const NAV = [
  { href: "/", label: "Dashboard" },
  { href: "/tasks", label: "Tasks" },
  { href: "/tasks/new", label: "New task", admin: true },
  { href: "/inventory", label: "Inventory" },
  { href: "/access", label: "Access" },
];

function current(href: string, path: string): boolean {
  if (href === "/") return path === "/";
  if (href === "/tasks") return path === "/tasks" || (path.startsWith("/tasks/") && path !== "/tasks/new");
  return path === href || path.startsWith(`${href}/`);
}

function Page({ path }: { path: string }) {
  let m;
  if (path === "/" || path === "/dashboard") return <DashboardPage />;
  if (path === "/tasks") return <TasksPage />;
  if (path === "/tasks/new") return <WizardPage />;
  if ((m = match("/tasks/:name/recovery", path))) return <RecoveryPage key={m.name} name={m.name} />;
  if ((m = match("/tasks/:name", path))) return <TaskPage key={m.name} name={m.name} />;
  if (path === "/inventory") return <InventoryPage />;
  if (path === "/access") return <AccessPage />;
  return (
    <>
      <h1 tabIndex={-1}>Not found</h1>
      <p>
        There is no page at <code>{path}</code>. <a href="/">Go to the dashboard</a>.
      </p>
    </>
  );
}

function Shell() {
  const path = route.value.split("?")[0];
  useEffect(() => {
    connect();
    return () => disconnect();
  }, []);
  const logout = async () => {
    try {
      await api("POST", "/api/logout", {});
    } finally {
      disconnect();
      session.value = null;
      navigate("/login", true);
    }
  };
  return (
    <div class="shell">
      <a class="skip" href="#content">Skip to content</a>
      <header class="side">
        <div class="brand">
          <Logo /> Continuum
        </div>
        <nav aria-label="main">
          <ul class="nav">
            {NAV.filter((n) => !n.admin || isAdmin()).map((n) => (
              <li key={n.href}>
                <a href={n.href} aria-current={current(n.href, path) ? "page" : undefined}>{n.label}</a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who">
          <span>
            {session.value?.user} <span class="muted">({session.value?.role})</span>
          </span>
          <LiveDot />
          <button type="button" onClick={logout}>Log out</button>
        </div>
      </header>
      <main class="content" id="content">
        <Page path={path} />
      </main>
    </div>
  );
}

function App() {
  const s = session.value;
  const path = route.value.split("?")[0];
  if (path === "/setup") return <SetupPage />;
  if (startError.value) {
    return (
      <div class="center">
        <main class="card">
          <h1>Continuum</h1>
          <ErrorBox error={startError.value} retry={() => location.reload()} />
        </main>
      </div>
    );
  }
  if (s === undefined) {
    return (
      <div class="center">
        <Loading what="Continuum" />
      </div>
    );
  }
  if (s === null) {
    if (path !== "/login") {
      queueMicrotask(() =>
        navigate(`/login${path !== "/" ? `?next=${encodeURIComponent(route.value)}` : ""}`, true)
      );
    }
    return <LoginPage />;
  }
  if (path === "/login") {
    queueMicrotask(() => navigate("/", true));
    return null;
  }
  return <Shell />;
}

if (location.pathname !== "/setup") loadSession().catch((e) => startError.value = e);
else session.value = null;
render(<App />, document.getElementById("app")!);
