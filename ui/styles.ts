// The UI's style sheet. It travels inside app.js and is adopted as a constructed style sheet
// (no <style> element, no inline style attribute: the page's Content-Security-Policy allows
// only 'self' for styles). System fonts only; nothing is fetched from elsewhere.
export const css = `
:root {
  --bg: #f5f6f8; --panel: #fff; --text: #1b1f24; --muted: #5b6570; --line: #d9dde2;
  --accent: #1f5fbf; --accent-text: #fff; --ok: #1d7a3a; --warn: #a05a00; --bad: #b3261e; --info: #2a6fb0;
  --ok-bg: #e3f4e8; --warn-bg: #fdf0dc; --bad-bg: #fde7e5; --info-bg: #e4effa; --idle-bg: #eceff2;
  --focus: #ffb020; --radius: 6px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-size: 15px; line-height: 1.45; color: var(--text); background: var(--bg);
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14171b; --panel: #1d2126; --text: #e6e9ec; --muted: #9aa4ae; --line: #333a42;
    --accent: #5b9cf0; --accent-text: #0b1220; --ok: #5cc27a; --warn: #f0a640; --bad: #ff7b72; --info: #79b8ff;
    --ok-bg: #173222; --warn-bg: #3a2a10; --bad-bg: #3d1a18; --info-bg: #142a40; --idle-bg: #262b31;
  }
}
* { box-sizing: border-box; }
html, body { margin: 0; }
body { min-height: 100vh; }
a { color: var(--accent); }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
h1 { font-size: 1.45rem; margin: 0 0 .75rem; }
h2 { font-size: 1.15rem; margin: 0 0 .6rem; }
h3 { font-size: 1rem; margin: .8rem 0 .4rem; }
p { margin: .3rem 0 .6rem; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .9em; }
.skip { position: absolute; left: -999px; top: 0; background: var(--panel); padding: .5rem 1rem; z-index: 10; }
.skip:focus { left: .5rem; }

.shell { display: grid; grid-template-columns: 210px minmax(0, 1fr); min-height: 100vh; }
.side { background: var(--panel); border-right: 1px solid var(--line); padding: 1rem .75rem; }
.brand { font-weight: 700; font-size: 1.1rem; margin: 0 0 1rem .25rem; display: flex; gap: .5rem; align-items: center; }
.brand-mark { width: 22px; height: 22px; }
.nav { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column; gap: 2px; }
.nav a { display: block; padding: .45rem .6rem; border-radius: var(--radius); color: var(--text); text-decoration: none; }
.nav a:hover { background: var(--idle-bg); }
.nav a[aria-current="page"] { background: var(--accent); color: var(--accent-text); }
.who { margin-top: 1.2rem; font-size: .85rem; color: var(--muted); padding: 0 .3rem; }
.who button { margin-top: .4rem; }
.live { display: inline-flex; align-items: center; gap: .35rem; font-size: .8rem; color: var(--muted); }
.dot { width: 9px; height: 9px; border-radius: 50%; background: var(--muted); display: inline-block; }
.dot.on { background: var(--ok); }
.dot.off { background: var(--bad); }
main.content { padding: 1.25rem 1.5rem 3rem; min-width: 0; }
.page-head { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: center; justify-content: space-between; margin-bottom: 1rem; }
.page-head h1 { margin: 0; }

.grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: var(--radius); padding: 1rem; min-width: 0; }
.panel + .panel { margin-top: 1rem; }
.grid > .panel + .panel { margin-top: 0; }
.kv { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .25rem .9rem; margin: 0; }
.kv dt { color: var(--muted); }
.kv dd { margin: 0; overflow-wrap: anywhere; }
.muted { color: var(--muted); }
.small { font-size: .85rem; }
.row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
.spacer { flex: 1; }

.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; }
th, td { text-align: left; padding: .4rem .55rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen { background: var(--ok-bg); }

.badge { display: inline-block; padding: .05rem .5rem; border-radius: 999px; font-size: .8rem; font-weight: 600;
  background: var(--idle-bg); color: var(--text); white-space: nowrap; }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
.badge.warn { background: var(--warn-bg); color: var(--warn); }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.info { background: var(--info-bg); color: var(--info); }

.meter { height: 10px; background: var(--idle-bg); border-radius: 5px; overflow: hidden; min-width: 80px; }
.meter > svg { display: block; width: 100%; height: 10px; }

button, .button { font: inherit; padding: .42rem .85rem; border-radius: var(--radius); border: 1px solid var(--line);
  background: var(--panel); color: var(--text); cursor: pointer; text-decoration: none; display: inline-block; }
button:hover:not(:disabled), .button:hover { border-color: var(--accent); }
button.primary, .button.primary { background: var(--accent); color: var(--accent-text); border-color: var(--accent); }
button.danger { background: var(--bad); color: #fff; border-color: var(--bad); }
button:disabled { opacity: .55; cursor: not-allowed; }
button.link { border: none; background: none; padding: 0; color: var(--accent); text-decoration: underline; }

form.stack, .stack { display: flex; flex-direction: column; gap: .7rem; }
.field { display: flex; flex-direction: column; gap: .2rem; min-width: 0; }
.field > span { font-weight: 600; font-size: .9rem; }
.field small { color: var(--muted); }
.field .err { color: var(--bad); font-size: .85rem; }
.fields { display: grid; gap: .7rem 1rem; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); }
input, select, textarea { font: inherit; padding: .4rem .5rem; border: 1px solid var(--line); border-radius: var(--radius);
  background: var(--panel); color: var(--text); min-width: 0; width: 100%; }
input[type="checkbox"], input[type="radio"] { width: auto; }
input[aria-invalid="true"], select[aria-invalid="true"] { border-color: var(--bad); }
label.check { display: flex; gap: .45rem; align-items: center; }
fieldset { border: 1px solid var(--line); border-radius: var(--radius); padding: .6rem .9rem .9rem; margin: 0; min-width: 0; }
legend { font-weight: 600; padding: 0 .3rem; }

.alert { border-radius: var(--radius); padding: .6rem .8rem; margin: .5rem 0; border: 1px solid transparent; }
.alert.error { background: var(--bad-bg); color: var(--bad); border-color: var(--bad); }
.alert.ok { background: var(--ok-bg); color: var(--ok); }
.alert.info { background: var(--info-bg); color: var(--info); }
.alert ul { margin: .3rem 0 0; padding-left: 1.2rem; }
.empty { color: var(--muted); padding: 1rem; text-align: center; border: 1px dashed var(--line); border-radius: var(--radius); }
.loading { color: var(--muted); display: flex; gap: .5rem; align-items: center; padding: .6rem 0; }
.spinner { width: 16px; height: 16px; border: 2px solid var(--line); border-top-color: var(--accent); border-radius: 50%;
  animation: spin 0.8s linear infinite; }
@keyframes spin { to { transform: rotate(360deg); } }
@media (prefers-reduced-motion: reduce) { .spinner { animation: none; } }

.steps { display: flex; flex-wrap: wrap; gap: .4rem; list-style: none; padding: 0; margin: 0 0 1rem; }
.steps li { padding: .25rem .7rem; border-radius: 999px; background: var(--idle-bg); font-size: .85rem; }
.steps li[aria-current="step"] { background: var(--accent); color: var(--accent-text); }
.steps li.done { background: var(--ok-bg); color: var(--ok); }

.log { list-style: none; margin: 0; padding: 0; max-height: 320px; overflow-y: auto; font-size: .88rem; }
.log li { padding: .3rem 0; border-bottom: 1px solid var(--line); display: grid; grid-template-columns: 6.5rem 6.5rem minmax(0, 1fr); gap: .5rem; }
.log time { color: var(--muted); font-variant-numeric: tabular-nums; }
.log .msg { overflow-wrap: anywhere; }

.chart { width: 100%; height: auto; display: block; }
.chart .axis { stroke: var(--line); }
.chart .grid-line { stroke: var(--line); stroke-dasharray: 2 3; }
.chart text { fill: var(--muted); font-size: 11px; }
.chart .s0 { stroke: var(--accent); fill: none; stroke-width: 2; }
.chart .s1 { stroke: var(--ok); fill: none; stroke-width: 2; }
.chart .s2 { stroke: var(--warn); fill: none; stroke-width: 2; }
.legend { display: flex; flex-wrap: wrap; gap: .3rem 1rem; font-size: .85rem; color: var(--muted); }
.legend .sw { display: inline-block; width: 12px; height: 3px; vertical-align: middle; margin-right: .3rem; }
.legend .sw.s0 { background: var(--accent); } .legend .sw.s1 { background: var(--ok); } .legend .sw.s2 { background: var(--warn); }

dialog { border: 1px solid var(--line); border-radius: var(--radius); background: var(--panel); color: var(--text);
  padding: 1.2rem; width: min(520px, calc(100vw - 2rem)); }
dialog::backdrop { background: rgba(0, 0, 0, .45); }
.dialog-actions { display: flex; justify-content: flex-end; gap: .5rem; margin-top: 1rem; flex-wrap: wrap; }

.center { min-height: 100vh; display: grid; place-items: center; padding: 1rem; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: var(--radius); padding: 1.5rem; width: min(400px, 100%); }

@media (max-width: 760px) {
  .shell { grid-template-columns: minmax(0, 1fr); }
  .side { border-right: none; border-bottom: 1px solid var(--line); padding: .6rem .75rem; }
  .brand { margin-bottom: .5rem; }
  .nav { flex-direction: row; flex-wrap: wrap; }
  .nav a { padding: .35rem .55rem; }
  .who { margin-top: .5rem; display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
  .who button { margin-top: 0; }
  main.content { padding: 1rem .75rem 2rem; }
  .grid { grid-template-columns: minmax(0, 1fr); }
  .log li { grid-template-columns: 5.5rem minmax(0, 1fr); }
  .log li .kind { display: none; }
}
`;
