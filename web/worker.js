// The playground's solver thread: the wasm module (softvi's grid engine) runs here so that
// a long solve never blocks the page. One call at a time; a newer solve cancels an older one
// at its next progress check (the progress callback returns false).
import init, * as wasm from './pkg/softvi_web.js';

const params = new URL(self.location.href).searchParams;
let latestSolve = 0;

const ready = (async () => {
  await init();
  let gpu = false;
  let adapterName = '';
  let why = 'this browser has no WebGPU (navigator.gpu is missing)';
  if (params.get('cpu') !== '1' && self.navigator.gpu) {
    try {
      const adapter = await self.navigator.gpu.requestAdapter();
      gpu = adapter !== null;
      if (!gpu) why = 'navigator.gpu offers no adapter';
      // WebGPU hides the adapter's name from wgpu; its info says what it is.
      else adapterName = [adapter.info?.vendor, adapter.info?.architecture, adapter.info?.description]
        .filter(Boolean).join(' ');
    } catch (e) {
      why = `navigator.gpu.requestAdapter failed: ${e}`;
    }
  } else if (params.get('cpu') === '1') {
    why = 'the CPU path was asked for (?cpu=1)';
  }
  const started = await wasm.start(gpu);
  const backend = started.startsWith('WebGPU') ? `WebGPU (${adapterName || 'adapter'})` : started;
  self.postMessage({ type: 'ready', backend, gpu: started.startsWith('WebGPU'), why });
})();

async function handle(msg) {
  // A solve goes on while it is the latest; any other call (the occupancy, the solve keeping
  // every step of a finite horizon that sampling and inference act with) while no solve or
  // world came after it.
  const progress = (sweeps, residual) => {
    self.postMessage({ type: 'progress', id: msg.id, sweeps, residual });
    return msg.type === 'solve' ? msg.id === latestSolve : latestSolve < msg.id;
  };
  switch (msg.type) {
    case 'maze':
      return [wasm.maze(msg.width, msg.height, BigInt(msg.seed)), []];
    case 'solve': {
      if (msg.id !== latestSolve) throw new Error('cancelled');
      const live = (sweeps, values) => {
        self.postMessage({ type: 'live', id: msg.id, sweeps, values }, [values.buffer]);
      };
      const r = await wasm.solve(JSON.stringify(msg.spec), msg.walls, progress, live);
      return [r, [r.values.buffer, r.policy.buffer, r.entropy.buffer]];
    }
    case 'occupancy': {
      const r = await wasm.occupancy(JSON.stringify(msg.spec), msg.walls, msg.start, msg.steps,
        progress);
      return [r, [r.buffer]];
    }
    case 'map': {
      const text = await (await fetch(`pkg/maps/${msg.name}`)).text();
      return [wasm.parse_map(text), []];
    }
    case 'trajectory':
      return [await wasm.trajectory(msg.task, msg.start, msg.steps, BigInt(msg.seed), progress), []];
    case 'posterior':
      return [await wasm.posterior(Uint32Array.from(msg.walk), progress), []];
    default:
      throw new Error(`unknown request ${msg.type}`);
  }
}

async function answer(msg) {
  try {
    const [result, transfer] = await handle(msg);
    self.postMessage({ type: 'done', id: msg.id, result }, transfer);
  } catch (err) {
    self.postMessage({ type: 'error', id: msg.id, error: String(err?.message ?? err) });
  }
}

// Calls that use the backend run one after another; a new world (maze, map) does not touch
// it, so it is answered at once, and it makes any solve still running obsolete.
let chain = ready;
self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === 'maze' || msg.type === 'map') {
    latestSolve = msg.id;
    ready.then(() => answer(msg));
    return;
  }
  if (msg.type === 'solve') latestSolve = msg.id;
  chain = chain.then(() => answer(msg));
};
