// The playground page: controls, drawing, and requests to the solver thread (worker.js).
// Colours are the CLI's (`softvi render`): viridis, walls black, goals magenta.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const VIRIDIS = [[68, 1, 84], [71, 44, 123], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
const WALL = [0, 0, 0], GOAL = [255, 0, 255], NO_VALUE = [96, 96, 96];
// (row, col) offsets of N, E, S, W, NE, SE, SW, NW, STAY: the library's action order.
const MOVES = [[-1, 0], [0, 1], [1, 0], [0, -1], [-1, 1], [1, 1], [1, -1], [-1, -1], [0, 0]];
const STAGE = 640;

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * 8;
  const i = Math.min(Math.floor(x), 7), f = x - i;
  return [0, 1, 2].map((k) => Math.round(VIRIDIS[i][k] * (1 - f) + VIRIDIS[i + 1][k] * f));
}

// ---- the solver thread ----
const worker = new Worker(`worker.js${params.get('cpu') === '1' ? '?cpu=1' : ''}`,
  { type: 'module' });
let nextId = 1;
const pending = new Map();
let onProgress = () => {};
let onLive = () => {};
function request(msg, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ ...msg, id }, transfer);
  });
}
let resolveReady;
const ready = new Promise((r) => { resolveReady = r; });
worker.onmessage = (e) => {
  const m = e.data;
  if (m.type === 'ready') {
    $('backend').textContent = m.gpu
      ? `Running softvi's WGSL kernels on ${m.backend}`
      : `No WebGPU here (${m.why}): running softvi's f64 CPU reference compiled to wasm.`;
    $('backend').className = m.gpu ? 'gpu' : 'cpu';
    S.backend = m.backend;
    resolveReady(m);
  } else if (m.type === 'progress') {
    onProgress(m);
  } else if (m.type === 'live') {
    onLive(m);
  } else {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.type === 'done') p.resolve(m.result); else p.reject(new Error(m.error));
  }
};
worker.onerror = (e) => { $('backend').textContent = `the solver thread failed: ${e.message}`; };

// ---- state ----
const S = {
  W: 0, H: 0, seed: 0, walls: null, edited: false, mapName: null, world: 0, goals: [], task: 0,
  result: null, horizon: null, occupancy: null, walk: [], traj: [], start: null, posterior: null,
  firstPictureMs: null, solves: 0, backend: '', maxStallMs: 0, liveDraws: 0,
  firstLiveMs: null,
};
// The longest the page's own thread went without running a 50 ms timer (solves run in the
// worker, so this stays near 50 ms however large the world).
let tick = performance.now();
setInterval(() => {
  const now = performance.now();
  S.maxStallMs = Math.max(S.maxStallMs, now - tick);
  tick = now;
}, 50);

// alpha as set: the log slider's position rounded to 3 digits, or a value given exactly.
let alpha = 1;
function settings() {
  return {
    alpha: $('hard').checked ? 0 : alpha,
    gamma: Number($('gamma').value),
    slip: Number($('slip').value),
    connectivity: Number($('connectivity').value),
    stay: $('stay').checked,
    backup: $('backup').value,
    horizon: $('finite').checked ? Number($('horizon').value) : null,
    tol: Number($('tol').value),
    max_iters: 100000,
  };
}

function spec() {
  return { width: S.W, height: S.H, goals: S.goals, ...settings() };
}

function label(cell) { return `${cell % S.W},${Math.floor(cell / S.W)}`; }

function showSettings() {
  const s = settings();
  $('alphav').textContent = String(s.alpha);
  $('gammav').textContent = String(s.gamma);
  $('slipv').textContent = String(s.slip);
  const world = S.edited ? '--map playground.map'
    : S.mapName ? `--map tests/data/maps/${S.mapName}` : `--maze ${S.W}x${S.H} --maze-seed ${S.seed}`;
  const goals = S.goals.map((g) => `--goal ${label(g)}`).join(' ');
  const horizon = s.horizon === null ? `--tol ${s.tol}` : `--horizon ${s.horizon}`;
  $('cli').value = `softvi solve ${world} ${goals} --alpha ${s.alpha} --gamma ${s.gamma} `
    + `--slip ${s.slip} --connectivity ${s.connectivity}${s.stay ? ' --stay' : ''} `
    + `--backup ${s.backup} ${horizon} --out playground-out`;
  $('mapfile').hidden = !S.edited;
  if (S.edited) {
    let text = `type octile\nheight ${S.H}\nwidth ${S.W}\nmap\n`;
    for (let r = 0; r < S.H; r++) {
      let row = '';
      for (let c = 0; c < S.W; c++) row += S.walls[r * S.W + c] ? '@' : '.';
      text += `${row}\n`;
    }
    URL.revokeObjectURL($('mapfile').href);
    $('mapfile').href = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  }
  const sel = $('task');
  sel.innerHTML = S.goals.map((g, i) => `<option value="${i}">goal ${i} at X,Y = ${label(g)}</option>`).join('');
  S.task = Math.min(S.task, Math.max(S.goals.length - 1, 0));
  sel.value = String(S.task);
}

// ---- solving ----
let solving = null;
async function solve() {
  showSettings();
  if (S.goals.length === 0) {
    $('status').textContent = 'Click the map to place a goal.';
    return null;
  }
  const started = performance.now();
  onProgress = (m) => {
    $('status').textContent = `solving… ${m.sweeps} sweeps, residual ${m.residual.toExponential(2)}`;
  };
  const world = S.world;
  const id = nextId;
  // The values as the solve runs (WebGPU): drawn as they come, for the shown task.
  onLive = (m) => {
    if (m.id !== id || S.world !== world || $('layer').value !== 'values') return;
    const pw = Math.ceil(S.W / 4) * 4, t = S.task, data = new Float32Array(S.W * S.H);
    for (let r = 0; r < S.H; r++) {
      data.set(m.values.subarray((t * S.H + r) * pw, (t * S.H + r) * pw + S.W), r * S.W);
    }
    drawMap(data);
    S.liveDraws++;
    if (S.firstLiveMs === null) S.firstLiveMs = performance.now();
  };
  const asked = spec();
  const run = request({ type: 'solve', spec: asked, walls: S.walls.slice() });
  solving = run;
  let r;
  try {
    r = await run;
  } catch (e) {
    // A newer solve or world replaced this one: the worker stopped it, nothing to report.
    if (solving !== run || /cancel/i.test(e.message)) return null;
    $('status').textContent = `error: ${e.message}`;
    throw e;
  }
  if (solving !== run || S.world !== world) return null;
  S.result = r;
  S.horizon = asked.horizon;
  S.occupancy = null;
  S.solves++;
  draw();
  if (S.firstPictureMs === null) S.firstPictureMs = performance.now();
  $('status').textContent = `${S.backend}: ${r.iterations} sweeps in ${(performance.now() - started).toFixed(0)} ms `
    + `(${r.status.join(', ')})`;
  return r;
}
let scheduled = false;
function resolveSoon() {
  showSettings();
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; solve().catch(reportError); });
}
// A call a newer solve or world made obsolete reports nothing: that one's status follows.
function reportError(e) {
  if (!/cancel/i.test(e.message)) $('status').textContent = `error: ${e.message}`;
}

// At a finite horizon T sampling and inference act with pi_t at step t, as `softvi sample`
// and `softvi infer` do: the worker solves once more keeping every step (pi_0..pi_{T-1}) on
// first use after a solve. Runs `call` with the status line saying so, then puts it back.
async function actingWith(what, call) {
  const before = $('status').textContent;
  if (S.horizon !== null) {
    onProgress = (m) => {
      $('status').textContent = `keeping pi_0..pi_${S.horizon - 1} for ${what}: `
        + `${m.sweeps} of ${S.horizon} sweeps`;
    };
  }
  const r = await call();
  $('status').textContent = before;
  return r;
}

async function newMaze(size, seed) {
  S.seed = seed;
  setWorld(size, size, await request({ type: 'maze', width: size, height: size, seed }), null);
}

async function loadMap(name) {
  const m = await request({ type: 'map', name });
  setWorld(m.width, m.height, m.walls, name);
}

// The free cell nearest to (row, col), scanning outwards.
function freeNear(row, col) {
  for (let d = 0; d < S.W + S.H; d++) {
    for (let r = Math.max(0, row - d); r <= Math.min(S.H - 1, row + d); r++) {
      for (let c = Math.max(0, col - d); c <= Math.min(S.W - 1, col + d); c++) {
        if (!S.walls[r * S.W + c]) return r * S.W + c;
      }
    }
  }
  return 0;
}

function setWorld(width, height, walls, mapName) {
  S.W = width; S.H = height; S.walls = walls; S.mapName = mapName; S.edited = false;
  S.world++;
  // Two goals in opposite corners, the start in a third (on a maze: its odd, free cells).
  S.goals = [freeNear(height - 2, width - 2), freeNear(1, width - 2)];
  S.start = freeNear(1, 1);
  S.walk = []; S.traj = []; S.posterior = null; S.result = null; S.occupancy = null;
  const k = STAGE / Math.max(width, height);
  $('map').width = width; $('map').height = height;
  $('map').style.width = `${width * k}px`; $('map').style.height = `${height * k}px`;
  $('over').getContext('2d').clearRect(0, 0, STAGE, STAGE);
}

// ---- drawing ----
function layerData() {
  const r = S.result, cells = S.W * S.H, t = S.task;
  const layer = $('layer').value;
  if (layer === 'occupancy' && S.occupancy) {
    return Array.from(S.occupancy.subarray(t * cells, (t + 1) * cells), (d) => (d > 0 ? Math.log10(d) : NaN));
  }
  const src = layer === 'entropy' ? r.entropy : r.values;
  return src.subarray(t * cells, (t + 1) * cells);
}

function draw() {
  if (!S.result) return;
  drawMap(layerData());
  drawOverlay();
}

// `data` `[cell]` in viridis over the free non-goal cells, walls black, goals magenta.
function drawMap(data) {
  const cells = S.W * S.H, goals = new Set(S.goals);
  let lo = Infinity, hi = -Infinity;
  for (let c = 0; c < cells; c++) {
    const v = data[c];
    if (!S.walls[c] && !goals.has(c) && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  const ctx = $('map').getContext('2d');
  const img = ctx.createImageData(S.W, S.H);
  for (let c = 0; c < cells; c++) {
    const v = data[c];
    const rgb = S.walls[c] ? WALL : goals.has(c) ? GOAL : !Number.isFinite(v) ? NO_VALUE
      : hi > lo ? viridis((v - lo) / (hi - lo)) : viridis(0.5);
    img.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * c);
  }
  ctx.putImageData(img, 0, 0);
}

function drawOverlay() {
  const ctx = $('over').getContext('2d');
  ctx.clearRect(0, 0, STAGE, STAGE);
  const k = STAGE / Math.max(S.W, S.H);
  const centre = (c) => [(c % S.W + 0.5) * k, (Math.floor(c / S.W) + 0.5) * k];
  const r = S.result;
  if (r && $('arrows').checked && k >= 6) {
    // The expected move under pi(.|s) from each cell, white as the CLI's arrows.
    const n = r.actions, base = S.task * S.W * S.H * n;
    ctx.strokeStyle = 'rgba(255,255,255,0.85)';
    ctx.lineWidth = Math.max(1, k / 10);
    ctx.beginPath();
    for (let c = 0; c < S.W * S.H; c++) {
      const p0 = r.policy[base + c * n];
      if (S.walls[c] || Number.isNaN(p0)) continue;
      let dr = 0, dc = 0;
      for (let a = 0; a < n; a++) {
        const m = MOVES[n === 5 || n === 9 ? (a === n - 1 ? 8 : a) : a];
        dr += r.policy[base + c * n + a] * m[0]; dc += r.policy[base + c * n + a] * m[1];
      }
      const [x, y] = centre(c);
      const ex = x + dc * k * 0.4, ey = y + dr * k * 0.4;
      ctx.moveTo(x, y); ctx.lineTo(ex, ey);
      ctx.moveTo(ex + 0.01, ey); ctx.arc(ex, ey, ctx.lineWidth, 0, 2 * Math.PI);
    }
    ctx.stroke();
  }
  const path = (cells, colour) => {
    if (cells.length === 0) return;
    ctx.strokeStyle = colour; ctx.lineWidth = Math.max(2, k / 4);
    ctx.beginPath();
    cells.forEach((c, i) => { const [x, y] = centre(c); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    ctx.stroke();
  };
  path(S.traj, 'rgb(255,64,32)');
  path(S.walk, 'rgb(0,220,255)');
  if (S.start !== null) {
    const [x, y] = centre(S.start);
    ctx.fillStyle = 'rgb(255,64,32)';
    ctx.fillRect(x - Math.max(2, k / 3), y - Math.max(2, k / 3), 2 * Math.max(2, k / 3), 2 * Math.max(2, k / 3));
  }
}

// The posterior after `step` steps of the walk (default: all of them), as bars.
function drawPosterior(step) {
  const rows = S.posterior, b = S.goals.length;
  if (!rows) { $('bars').innerHTML = ''; return; }
  const steps = step ?? rows.length / b - 1;
  const last = rows.subarray(steps * b, (steps + 1) * b);
  const policy = S.horizon === null ? 'the stationary pi' : `pi_t at step t, horizon T = ${S.horizon}`;
  $('bars').innerHTML = `<div>p(goal | walk), after ${steps} steps (${policy}):</div>` + Array.from(last, (p, i) =>
    `<div>goal ${i} (X,Y = ${label(S.goals[i])}): ${p.toFixed(3)}</div>`
    + `<div class="bar" style="width:${Math.max(1, 280 * p)}px"></div>`).join('');
}

// ---- input ----
function cellAt(e) {
  const rect = $('over').getBoundingClientRect();
  const k = STAGE / Math.max(S.W, S.H);
  const col = Math.floor((e.clientX - rect.left) / k), row = Math.floor((e.clientY - rect.top) / k);
  if (col < 0 || row < 0 || col >= S.W || row >= S.H) return null;
  return row * S.W + col;
}
let dragging = false;
$('over').addEventListener('mousedown', (e) => {
  const c = cellAt(e);
  if (c === null) return;
  const tool = $('tool').value;
  if (tool === 'goal') {
    if (S.walls[c]) return;
    const i = S.goals.indexOf(c);
    if (i >= 0) S.goals.splice(i, 1); else S.goals.push(c);
    S.posterior = null; drawPosterior();
    resolveSoon();
  } else if (tool === 'start') {
    if (!S.walls[c]) { S.start = c; drawOverlay(); }
  } else {
    dragging = true;
    if (tool === 'walk') S.walk = [];
    paint(e);
  }
});
window.addEventListener('mouseup', () => {
  if (!dragging) return;
  dragging = false;
  if ($('tool').value === 'wall') resolveSoon();
});
$('over').addEventListener('mousemove', (e) => { if (dragging) paint(e); });
function paint(e) {
  const c = cellAt(e);
  if (c === null) return;
  if ($('tool').value === 'wall') {
    const wall = e.shiftKey ? 0 : 1;
    if (S.walls[c] !== wall && !S.goals.includes(c)) {
      S.walls[c] = wall; S.edited = true;
      $('map').getContext('2d').fillStyle = wall ? 'black' : 'gray';
      $('map').getContext('2d').fillRect(c % S.W, Math.floor(c / S.W), 1, 1);
    }
  } else if (!S.walls[c] && S.walk[S.walk.length - 1] !== c) {
    S.walk.push(c); drawOverlay();
  }
}

$('alpha').addEventListener('input', () => {
  alpha = Number((10 ** Number($('alpha').value)).toPrecision(3));
});
for (const id of ['alpha', 'hard', 'gamma', 'slip', 'connectivity', 'stay', 'backup', 'finite', 'horizon', 'tol']) {
  $(id).addEventListener('input', resolveSoon);
}
$('layer').addEventListener('change', () => {
  if ($('layer').value === 'occupancy' && !S.occupancy) runOccupancy().catch(reportError); else draw();
});
$('arrows').addEventListener('change', drawOverlay);
$('task').addEventListener('change', () => { S.task = Number($('task').value); draw(); });
$('mapname').addEventListener('change', () => {
  if ($('mapname').value) loadMap($('mapname').value).then(solve).catch(reportError);
});
$('newmaze').addEventListener('click', () => {
  $('mapname').value = '';
  newMaze(Number($('size').value), Number($('seed').value)).then(solve).catch(reportError);
});
$('sample').addEventListener('click', () => sampleTrajectory().catch(reportError));
async function sampleTrajectory() {
  S.traj = Array.from(await actingWith('sampling', () => request({ type: 'trajectory', task: S.task,
    start: S.start, steps: Number($('steps').value), seed: Math.floor(Math.random() * 2 ** 31) })));
  // Animated: the path grows a cell per frame.
  const full = S.traj;
  for (let i = 1; i <= full.length; i += Math.max(1, Math.floor(full.length / 120))) {
    S.traj = full.slice(0, i); drawOverlay();
    await new Promise(requestAnimationFrame);
  }
  S.traj = full; drawOverlay();
}
async function runOccupancy() {
  const steps = settings().horizon ?? Number($('steps').value);
  S.occupancy = await request({ type: 'occupancy', spec: spec(), walls: S.walls.slice(),
    start: S.start, steps });
  $('layer').value = 'occupancy';
  draw();
  $('status').textContent += ` · occupancy over ${steps} steps from X,Y = ${label(S.start)}`;
}
$('occ').addEventListener('click', () => runOccupancy().catch(reportError));
$('infer').addEventListener('click', () => inferWalk(S.walk).catch(reportError));
$('clearwalk').addEventListener('click', () => { S.walk = []; S.posterior = null; drawPosterior(); drawOverlay(); });
async function inferWalk(walk) {
  S.walk = Array.from(walk);
  drawOverlay();
  S.posterior = await actingWith('goal inference',
    () => request({ type: 'posterior', walk: S.walk }));
  // Step by step along the walk, about two seconds in all, ending on the whole walk.
  const steps = S.posterior.length / S.goals.length - 1;
  for (let t = 0; t < steps; t += Math.max(1, Math.ceil(steps / 120))) {
    drawPosterior(t);
    await new Promise(requestAnimationFrame);
  }
  drawPosterior();
  return S.posterior;
}

// ---- start: ?size=&seed=&alpha=&gamma=&cpu=1 ----
function setAlpha(a) {
  $('hard').checked = a === 0;
  if (a > 0) { alpha = a; $('alpha').value = String(Math.log10(a)); }
}
if (params.has('alpha')) setAlpha(Number(params.get('alpha')));
if (params.has('gamma')) $('gamma').value = params.get('gamma');
const size = Number(params.get('size') ?? 31), seed = Number(params.get('seed') ?? 0);
$('size').value = String(size); $('seed').value = String(seed);
const startup = (async () => {
  const info = await ready;
  await newMaze(size, seed);
  await solve().catch(reportError);
  return info;
})();

// The hooks the browser test (.ci/browser_test.py) drives the page through.
window.playground = {
  ready: startup,
  state: S,
  settings,
  // Sets controls ({alpha, gamma, slip, connectivity, stay, backup, horizon, tol, goals}) and solves.
  async solveWith(s) {
    if ('alpha' in s) setAlpha(s.alpha);
    for (const k of ['gamma', 'slip', 'connectivity', 'backup', 'tol']) if (k in s) $(k).value = String(s[k]);
    if ('stay' in s) $('stay').checked = s.stay;
    if ('horizon' in s) { $('finite').checked = s.horizon !== null; if (s.horizon !== null) $('horizon').value = String(s.horizon); }
    if ('goals' in s) S.goals = s.goals.slice();
    return solve();
  },
  mapImage: () => $('map').toDataURL(),
  // Loads a bundled MovingAI map (web/pkg/maps/) with its default goals, unsolved.
  loadMap,
  inferWalk,
  // The occupancy from `start` over `steps` steps ([task][cell], expected visits).
  async occupancy(start, steps) {
    S.start = start; $('steps').value = String(steps);
    await runOccupancy();
    return Array.from(S.occupancy, (v) => (Number.isNaN(v) ? null : v));
  },
  // One trajectory (cells) as `softvi sample --episodes 1 --seed` draws it; pi_t at step t of
  // a finite horizon.
  trajectory: (task, start, steps, seed) => actingWith('sampling',
    () => request({ type: 'trajectory', task, start, steps, seed })).then(Array.from),
};
