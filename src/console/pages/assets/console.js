// Tandem console: every page stays live over Server-Sent Events (each event makes the
// page fetch its <main> again with ?fragment=1; a page with a progress bar also every
// second), and every action is a confirmed fetch() to the control API with the page's
// CSRF token.
const main = document.getElementById('main');
const dialog = document.getElementById('confirm');
const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? '';

// The events page's filters: each row carries data-kind, data-group and data-node.
function applyFilters() {
  const wanted = [...main.querySelectorAll('input[data-filter]')]
    .map((i) => [i.dataset.filter, i.value.trim().toLowerCase()])
    .filter(([, v]) => v);
  for (const tr of main.querySelectorAll('tr[data-kind]')) {
    tr.hidden = !wanted.every(([k, v]) => (tr.dataset[k] ?? '').toLowerCase().includes(v));
  }
}

// Swap in the page's current <main>, keeping what was typed in its inputs.
let pending = null;
async function refresh() {
  pending = null;
  const url = new URL(location.href);
  url.searchParams.set('fragment', '1');
  const res = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
  if (!res.ok) return;
  const html = await res.text();
  const kept = [...main.querySelectorAll('input[id]')].map((i) => [i.id, i.value]);
  const focused = document.activeElement?.id;
  main.innerHTML = html;
  for (const [id, value] of kept) {
    const input = document.getElementById(id);
    if (input) input.value = value;
  }
  if (focused) document.getElementById(focused)?.focus();
  applyFilters();
  document.body.dataset.refreshed = String(Date.now());
  drawPlan();
}
function soon() {
  if (!pending) pending = setTimeout(refresh, 150);
}

// The stream's state shows in the header (body[data-live]): a page on a node that went
// away says so while the browser retries.
const stream = new EventSource('/ui/stream');
stream.addEventListener('tandem', soon);
stream.addEventListener('open', () => {
  if (document.body.dataset.live === 'lost') soon();
  document.body.dataset.live = 'open';
});
stream.addEventListener('error', () => {
  document.body.dataset.live = 'lost';
});
// A resync or verify moves without events: while a page shows a progress bar, it is
// fetched again every second so the bar moves.
setInterval(() => {
  if (main.querySelector('progress')) soon();
}, 1000);
main.addEventListener('input', (e) => {
  if (e.target.dataset.filter) applyFilters();
});

// Actions: the button carries the API path, the JSON body, the warnings and the
// equivalent command line; the dialog shows them and the API's answer.
let chosen = null;
main.addEventListener('click', (e) => {
  const b = e.target.closest('button.act');
  if (!b) return;
  chosen = { path: b.dataset.path, body: b.dataset.body };
  dialog.querySelector('.what').textContent = `${b.textContent}?`;
  const warnings = b.dataset.warnings ? b.dataset.warnings.split('\n') : [];
  dialog.querySelector('.warnings').replaceChildren(
    ...warnings.map((w) => Object.assign(document.createElement('li'), { textContent: w })),
  );
  dialog.querySelector('.cmd').textContent = b.dataset.command;
  const result = dialog.querySelector('.result');
  result.textContent = '';
  result.className = 'result';
  dialog.querySelector('.go').disabled = false;
  dialog.showModal();
});

dialog.querySelector('.go').addEventListener('click', async (e) => {
  e.preventDefault();
  e.currentTarget.disabled = true;
  const result = dialog.querySelector('.result');
  result.textContent = 'Working…';
  try {
    const res = await fetch(chosen.path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: chosen.body,
    });
    const text = await res.text();
    let message = text;
    try {
      const json = JSON.parse(text);
      message = json.error ?? JSON.stringify(json);
    } catch {
      // not JSON: show the text as it came
    }
    result.textContent = `${res.ok ? 'Done' : `Refused (${res.status})`}: ${message}`;
    result.className = `result ${res.ok ? 'ok' : 'bad'}`;
  } catch (err) {
    result.textContent = `Failed: ${err}`;
    result.className = 'result bad';
  }
  refresh();
});

// The mirror page's link sizing, from the API's plan (`tandem mirror plan`): the write
// rate in each hour of the day (mean and peak) against the recommended link. Fetched
// at most once a minute; page refreshes put the last drawing back.
const plans = new Map();
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const mbit = (bytesPerSecond) => (bytesPerSecond * 8) / 1e6;
function planChart(plan) {
  const o = plan.outcome;
  if (o.status !== 'sized') {
    return `<p>Not enough history yet: ${o.needed_minutes} observed minutes are needed ` +
      `(${plan.coverage.observed_minutes} so far).</p>`;
  }
  const link = o.recommended.bandwidth_bits_per_second / 1e6;
  const r = o.rates;
  const top = Math.max(link, ...o.hourly.map((h) => mbit(h.peak_bytes_per_second)), 1e-3);
  const [W, H, L, B] = [720, 200, 40, 20];
  const bw = (W - L) / 24;
  const y = (v) => H - B - (v / top) * (H - B - 14);
  const bar = (cls, x, v, what) =>
    `<rect class="${cls}" x="${x}" y="${y(v)}" width="${bw - 4}" height="${H - B - y(v)}">` +
    `<title>${what} ${v.toFixed(2)} Mbit/s</title></rect>`;
  let bars = '';
  for (const h of o.hourly) {
    const x = L + h.hour * bw + 2;
    bars += bar('peak', x, mbit(h.peak_bytes_per_second), `${h.hour}:00 UTC peak`);
    bars += bar('mean', x, mbit(h.mean_bytes_per_second), `${h.hour}:00 UTC mean`);
    if (h.hour % 3 === 0) bars += `<text class="tick" x="${x}" y="${H - 5}">${h.hour}h</text>`;
  }
  return `<p>Lag under ${plan.target.lag_seconds} s in ${plan.target.percentile}% of the ` +
    `minutes needs <b>${link.toFixed(2)} Mbit/s</b>. Writes: peak ${mbit(r.peak_bytes_per_second).toFixed(2)}, ` +
    `p95 ${mbit(r.p95_bytes_per_second).toFixed(2)} Mbit/s, ` +
    `${(r.daily_volume_bytes / 2 ** 30).toFixed(2)} GiB a day.</p>` +
    `<svg class="plan" viewBox="0 0 ${W} ${H}">${bars}` +
    `<line class="link" x1="${L}" x2="${W}" y1="${y(link)}" y2="${y(link)}"/>` +
    `<text class="link" x="${L + 4}" y="${y(link) - 4}">recommended link ${link.toFixed(2)} Mbit/s</text></svg>`;
}
async function drawPlan() {
  const box = main.querySelector('#plan[data-mirror]');
  if (!box) return;
  const name = box.dataset.mirror;
  const last = plans.get(name);
  if (last) box.innerHTML = last.html;
  if (last && Date.now() - last.at < 60000) return;
  plans.set(name, { at: Date.now(), html: last?.html ?? box.innerHTML });
  let html;
  try {
    const res = await fetch(`/v1/mirrors/${encodeURIComponent(name)}/plan`, {
      credentials: 'same-origin',
    });
    const answer = await res.json();
    html = res.ok ? planChart(answer) : `<p>No sizing: ${esc(answer.error ?? res.status)}</p>`;
  } catch (err) {
    html = `<p>No sizing: ${esc(err)}</p>`;
  }
  plans.set(name, { at: Date.now(), html });
  const now = main.querySelector('#plan[data-mirror]');
  if (now?.dataset.mirror === name) now.innerHTML = html;
}
drawPlan();
