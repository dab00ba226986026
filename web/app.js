// The page: UI and event loop only. Every computation (data parsing, model, augmentation,
// OneCycle, training, evaluation, weights) is the Rust core, called through `Session`.
import { lineChart } from './charts.js';

const $ = (id) => document.getElementById(id);
// From the core once the wasm module is up (main): nothing of the recipe is retyped here.
let CLASSES = [];
let FILES = [];
let RECIPE = null; // the TrainingConfig the form edits (`recipe(optimizer)`)

// Everything the page shows, also read by the end-to-end test.
const state = (window.appState = {
  ready: false, session: null, data: null, busy: false, running: false, paused: false, stop: false,
  info: null, stepLoss: [], epochs: [], speed: [], step: 0, lrFind: null, predictions: null,
  misclassified: 0, confusion: null, errors: [], finished: false, waiting: false, adapter: null,
});

function say(id, text, error = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('error', error);
  if (error) state.errors.push(text);
}

// A wasm trap (panic) or a lost GPU surfaces as an exception: say it plainly.
function explain(e) {
  const msg = e && e.message ? e.message : String(e);
  if (/lost|Device|RuntimeError|unreachable/i.test(msg) || e instanceof WebAssembly.RuntimeError) {
    say('gpu-status', `The GPU device was lost or the computation crashed (${msg}). Reload the page to start again.`, true);
  }
  return msg;
}

async function guarded(statusId, fn) {
  if (state.busy) { say(statusId, 'busy: wait for the current operation to finish', true); return; }
  state.busy = true;
  try { await fn(); } catch (e) { say(statusId, explain(e), true); } finally { state.busy = false; }
}

// The browser's WebGPU adapter as it describes itself (vendor, architecture, device), and
// whether it is a CPU implementation: SwiftShader, llvmpipe/lavapipe or WARP, or any adapter
// the browser marks as a fallback. wgpu asks for the default adapter, as this does.
const CPU_ADAPTER = /swiftshader|llvmpipe|lavapipe|softpipe|\bwarp\b|basic render/i;
async function describeAdapter() {
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return null;
  const info = adapter.info || (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const parts = [info.vendor, info.architecture, info.device, info.description].filter((s) => s);
  const name = parts.join(' ') || 'an adapter that does not name itself';
  const cpu = Boolean(info.isFallbackAdapter || adapter.isFallbackAdapter) || CPU_ADAPTER.test(parts.join(' '));
  // The limits that bound a tensor's size; wgpu asks the device for the adapter's limits.
  const limits = { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize };
  return { name, cpu, limits, vendor: info.vendor || '', architecture: info.architecture || '' };
}

// The convolution takes effect from the next step or evaluation; the status line names it.
// A choice the device cannot run (gemm-f16 without shader-f16) is refused with the reason, and
// the form goes back to the choice in use.
const CONV_NAMES = { gemm: 'GEMM over im2col', 'gemm-f16': 'GEMM over im2col, f16 operands and f32 sums', burn: 'Burn\'s direct kernel' };
function applyGpuConv() {
  const on = state.adapter ? ` on ${state.adapter.name}` : '';
  let used;
  try {
    used = state.session.set_gpu_conv($('gpu-conv').value, Boolean(state.adapter && state.adapter.cpu));
  } catch (e) {
    $('gpu-conv').value = state.gpuConvChoice || 'auto';
    say('gpu-status', `WebGPU ready${on}; convolutions: ${CONV_NAMES[state.gpuConv]} (${explain(e)}).`, true);
    return;
  }
  state.gpuConv = used;
  state.gpuConvChoice = $('gpu-conv').value;
  say('gpu-status', `WebGPU ready${on}; convolutions: ${CONV_NAMES[used]}.`);
}

function bindings() {
  if (window.wasmBindings) return Promise.resolve(window.wasmBindings);
  return new Promise((resolve) => addEventListener('TrunkApplicationStarted', () => resolve(window.wasmBindings), { once: true }));
}

// ---------- data ----------
function limits() { return [Number($('train-limit').value) || 0, Number($('test-limit').value) || 0]; }

function loadParsed(names, arrays) {
  const [trainLimit, testLimit] = limits();
  const summary = JSON.parse(state.session.load_files(names, arrays, $('verify').checked, trainLimit, testLimit));
  state.data = summary;
  say('data-status', `CIFAR-10 loaded: ${summary.train} training and ${summary.test} test images.`);
}

async function fetchWithProgress(url, onBytes) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} — run the native CLI once (it downloads CIFAR-10 into data/), then restart trunk serve`);
  const reader = res.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    n += value.length;
    onBytes(value.length);
  }
  const out = new Uint8Array(n);
  let off = 0;
  for (const c of chunks) { out.set(c, off); off += c.length; }
  return out;
}

async function loadFromServer() {
  const total = FILES.length * 30730000;
  let seen = 0;
  const bar = $('data-progress');
  const arrays = [];
  for (const f of FILES) {
    say('data-status', `downloading ${f}…`);
    arrays.push(await fetchWithProgress(`data/cifar-10-batches-bin/${f}`, (n) => { seen += n; bar.value = seen / total; }));
  }
  say('data-status', 'parsing…');
  await new Promise((r) => setTimeout(r, 0));
  loadParsed(FILES, arrays);
}

async function loadFromFiles(fileList) {
  const files = [...fileList];
  const bar = $('data-progress');
  const names = [], arrays = [];
  for (const [i, f] of files.entries()) {
    say('data-status', `reading ${f.name}…`);
    arrays.push(new Uint8Array(await f.arrayBuffer()));
    names.push(f.name);
    bar.value = (i + 1) / files.length;
  }
  say('data-status', 'parsing…');
  await new Promise((r) => setTimeout(r, 0));
  loadParsed(names, arrays);
}

// ---------- weights ----------
function loadWeightBytes(name, bytes) {
  const info = JSON.parse(state.session.load_weights(name, bytes));
  say('weights-status', `${name}: width ${info.width}, ${info.params.toLocaleString()} parameters loaded.`);
  $('width').value = info.width;
}

// The model shipped with the project (pretrained/, written by tools/ship_model.py): its bytes
// must have the SHA-256 recorded beside them. With the test images loaded it is evaluated at
// once (accuracy, mistakes, confusion matrix); "start from the loaded weights" fine-tunes it.
async function loadPretrained() {
  const get = async (file) => {
    const res = await fetch(`pretrained/${file}`);
    if (!res.ok) throw new Error(`pretrained/${file}: HTTP ${res.status}`);
    return res;
  };
  const meta = await (await get('model.json')).json();
  say('weights-status', `downloading pretrained/${meta.file} (${meta.bytes.toLocaleString()} bytes)…`);
  const bytes = new Uint8Array(await (await get(meta.file)).arrayBuffer());
  const digest = [...new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))].map((b) => b.toString(16).padStart(2, '0')).join('');
  if (digest !== meta.sha256) throw new Error(`pretrained/${meta.file}: SHA-256 ${digest}, expected ${meta.sha256}`);
  loadWeightBytes(meta.file, bytes);
  const c = meta.config;
  $('pretrained-info').textContent =
    `Pretrained: width ${c.model.width}, ${meta.run.epochs} epochs of the ${c.optimizer.kind} recipe, stored as ${meta.dtype}; ` +
    `recorded test accuracy ${(100 * meta.test_acc).toFixed(2)}% (flip TTA ${(100 * meta.test_acc_tta).toFixed(2)}%) on all ${meta.test_images.toLocaleString()} test images.`;
  $('fine-tune').checked = true;
  if (!state.data) {
    say('weights-status', `${$('weights-status').textContent} Load CIFAR-10 to evaluate it here.`);
    return;
  }
  say('weights-status', 'evaluating the pretrained model…');
  const r = JSON.parse(await state.session.evaluate($('tta').checked));
  const tta = $('tta').checked ? ', flip TTA' : '';
  say('weights-status', `pretrained model: test accuracy ${(100 * r.accuracy).toFixed(2)}% on ${state.data.test.toLocaleString()} test images${tta}, loss ${r.loss.toFixed(4)}`);
  await showResults();
}

async function download() {
  const bytes = await state.session.weights();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  a.download = 'model.safetensors';
  document.body.appendChild(a);
  a.click();
  a.remove();
  say('weights-status', `model.safetensors downloaded (${bytes.length.toLocaleString()} bytes).`);
}

// ---------- training ----------
// The recipe from the core with the form's values over it.
function config() {
  const num = (id) => {
    const v = Number($(id).value);
    if (!Number.isFinite(v)) throw new Error(`${id}: not a number`);
    return v;
  };
  return {
    ...RECIPE,
    model: { ...RECIPE.model, width: num('width'), dropout: num('dropout'), logit_scale: num('logit-scale') },
    optimizer: { ...RECIPE.optimizer, kind: $('optimizer').value, max_lr: num('max-lr'), weight_decay: num('weight-decay') },
    epochs: num('epochs'), batch_size: num('batch-size'), label_smoothing: num('label-smoothing'), seed: num('seed'),
    ema: { ...RECIPE.ema, decay: num('ema-decay') }, tta: $('train-tta').checked,
  };
}

// The form shows a named recipe (`seed` or `best`, as `train --recipe`); choosing another
// optimizer switches max LR, weight decay and logit scale to its defaults (the other fields
// keep what the user typed).
function useRecipe(b, name) {
  RECIPE = JSON.parse(b.named_recipe(name));
  $('optimizer').value = RECIPE.optimizer.kind;
  useOptimizer(b, RECIPE.optimizer.kind);
  $('epochs').value = RECIPE.epochs;
  $('batch-size').value = RECIPE.batch_size;
  $('width').value = RECIPE.model.width;
  $('dropout').value = RECIPE.model.dropout;
  $('logit-scale').value = RECIPE.model.logit_scale;
  $('label-smoothing').value = RECIPE.label_smoothing;
  $('ema-decay').value = RECIPE.ema.decay;
  $('train-tta').checked = RECIPE.tta;
  $('seed').value = RECIPE.seed;
}

function useOptimizer(b, optimizer) {
  const r = JSON.parse(b.recipe(optimizer));
  RECIPE = { ...RECIPE, optimizer: r.optimizer };
  $('max-lr').value = RECIPE.optimizer.max_lr;
  $('weight-decay').value = RECIPE.optimizer.weight_decay;
  $('logit-scale').value = r.model.logit_scale;
}

function drawCharts() {
  const spe = state.info ? state.info.steps_per_epoch : 1;
  // Per-step losses smoothed with an exponential moving average (as the native progress bar).
  let avg = null;
  const smooth = state.stepLoss.map(([x, y]) => { avg = avg === null ? y : 0.9 * avg + 0.1 * y; return [x, avg]; });
  lineChart($('chart-loss'), [
    { label: 'train (per step)', points: smooth },
    { label: 'train (epoch)', points: state.epochs.map((m) => [m.epoch, m.train_loss]), dots: true },
    { label: 'test (epoch)', points: state.epochs.map((m) => [m.epoch, m.test_loss]), dots: true },
  ], { xlabel: 'epoch' });
  lineChart($('chart-acc'), [
    { label: 'train', points: state.epochs.map((m) => [m.epoch, 100 * m.train_acc]), dots: true },
    { label: 'test', points: state.epochs.map((m) => [m.epoch, 100 * m.test_acc]), dots: true },
  ], { xlabel: 'epoch', ymin: 0, ymax: 100 });
  if (state.info) {
    const lrs = state.info.lrs;
    const every = Math.max(1, Math.floor(lrs.length / 600));
    lineChart($('chart-lr'), [{ label: 'learning rate', points: lrs.filter((_, i) => i % every === 0).map((lr, i) => [(i * every) / spe, lr]) }],
      { xlabel: 'epoch', marker: { x: state.step / spe, label: 'now' } });
  }
  lineChart($('chart-speed'), [{ label: 'images/s', points: state.speed }], { xlabel: 'epoch', ymin: 0 });
}

async function showResults() {
  state.predictions = JSON.parse(state.session.predictions());
  const items = JSON.parse(state.session.misclassified(40));
  const pixels = state.session.misclassified_pixels(40);
  const canvas = $('misclassified');
  const cols = 10, cell = 104, scale = 3, rows = Math.max(1, Math.ceil(items.length / cols));
  canvas.height = rows * (cell + 26) + 12; // (assigning the size clears the canvas: once, before drawing)
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement('canvas');
  tile.width = tile.height = 32;
  const tctx = tile.getContext('2d');
  items.forEach((it, k) => {
    const img = tctx.createImageData(32, 32);
    const src = pixels.subarray(k * 3072, (k + 1) * 3072);
    for (let p = 0; p < 1024; p++) {
      img.data[4 * p] = src[p]; img.data[4 * p + 1] = src[1024 + p]; img.data[4 * p + 2] = src[2048 + p]; img.data[4 * p + 3] = 255;
    }
    tctx.putImageData(img, 0, 0);
    const x = (k % cols) * cell + 4, y = Math.floor(k / cols) * (cell + 26) + 2;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tile, x, y, 32 * scale, 32 * scale);
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#2a7a2a';
    ctx.fillText(`true: ${CLASSES[it.truth]}`, x, y + 32 * scale + 11);
    ctx.fillStyle = '#b3261e';
    ctx.fillText(`pred: ${CLASSES[it.predicted]} ${Math.round(100 * it.confidence)}%`, x, y + 32 * scale + 23);
  });
  state.misclassified = items.length;
  const c = JSON.parse(state.session.confusion());
  state.confusion = c;
  const table = $('confusion');
  table.innerHTML = '';
  const head = table.insertRow();
  head.innerHTML = '<th>true \\ predicted</th>' + c.classes.map((n) => `<th>${n}</th>`).join('') + '<th>accuracy</th>';
  c.counts.forEach((row, i) => {
    const tr = table.insertRow();
    tr.innerHTML = `<th>${c.classes[i]}</th>` + row.map((v, j) => `<td style="background:${i === j ? '#e3ecff' : v ? '#fde8e6' : '#fff'}">${v}</td>`).join('') + `<td>${(100 * c.per_class[i]).toFixed(1)}%</td>`;
  });
  say('results-status', `${items.length} most confident mistakes of ${state.predictions.length} test images; accuracy ${(100 * c.accuracy).toFixed(2)}%.`);
}

async function train() {
  const cfg = config();
  const every = Math.max(1, Number($('sync-every').value) || 1);
  state.info = JSON.parse(state.session.start(JSON.stringify(cfg), $('fine-tune').checked, every));
  Object.assign(state, { stepLoss: [], epochs: [], speed: [], step: 0, running: true, paused: false, waiting: false, stop: false, finished: false });
  $('start').disabled = true; $('pause').disabled = false; $('stop').disabled = false;
  say('train-status', `training ${state.info.params.toLocaleString()} parameters: ${cfg.epochs} epochs × ${state.info.steps_per_epoch} steps`);
  drawCharts();
  const started = performance.now();
  try {
    for (;;) {
      if (state.stop) { say('train-status', `stopped at step ${state.step}; the weights so far can be downloaded`); break; }
      // `waiting`: paused, with no step in flight (the e2e test waits for it).
      if (state.paused) { state.waiting = true; await new Promise((r) => setTimeout(r, 100)); continue; }
      state.waiting = false;
      // The core's driver: steps up to the next read-back, and the test pass at an epoch's end.
      const r = JSON.parse(await state.session.advance());
      const p = r.steps;
      state.step = p.step;
      const spe = state.info.steps_per_epoch;
      if (p.steps > 0) {
        state.stepLoss.push([p.step / spe, p.recent_loss]);
        state.speed.push([p.step / spe, (p.steps * cfg.batch_size) / p.seconds]);
      }
      const elapsed = (performance.now() - started) / 1000;
      const eta = p.step > 0 ? (elapsed / p.step) * (state.info.total_steps - p.step) : 0;
      $('stats').textContent =
        `epoch ${state.epochs.length + 1}/${cfg.epochs}  step ${p.batch}/${p.batches}  loss ${p.loss.toFixed(4)}  acc ${(100 * p.accuracy).toFixed(2)}%  ` +
        `lr ${p.lr.toExponential(2)}  ${state.speed.length ? state.speed[state.speed.length - 1][1].toFixed(1) : '-'} img/s  ETA ${Math.round(eta)} s`;
      if (r.epoch) {
        const m = r.epoch;
        state.epochs.push(m);
        await showResults();
        say('train-status', `epoch ${m.epoch}: test accuracy ${(100 * m.test_acc).toFixed(2)}%, test loss ${m.test_loss.toFixed(4)}`);
        if (r.finished) {
          state.finished = true;
          const tta = m.test_acc_tta != null ? `, with flip TTA ${(100 * m.test_acc_tta).toFixed(2)}%` : '';
          say('train-status', `done: test accuracy ${(100 * m.test_acc).toFixed(2)}%${tta}`);
          drawCharts();
          break;
        }
      }
      drawCharts();
      await new Promise((r) => setTimeout(r, 0)); // let the page repaint and handle clicks
    }
  } finally {
    state.running = false;
    $('start').disabled = false; $('pause').disabled = true; $('stop').disabled = true;
  }
}

async function lrFind() {
  say('train-status', 'LR range test running…');
  const r = JSON.parse(await state.session.lr_find(JSON.stringify(config()), Number($('lr-iters').value) || 100));
  state.lrFind = r;
  lineChart($('chart-lrfind'), [{ label: 'smoothed loss', points: r.lrs.map((lr, i) => [lr, r.losses[i]]) }],
    { logx: true, xlabel: 'learning rate', marker: r.suggestion ? { x: r.suggestion, label: `suggested ${r.suggestion.toExponential(1)}` } : undefined });
  if (r.suggestion) {
    $('max-lr').value = r.suggestion.toPrecision(2);
    say('train-status', `suggested max LR ${r.suggestion.toExponential(2)} (now in the max LR field)`);
  } else {
    say('train-status', 'the loss never fell: no suggestion', true);
  }
}

// ---------- own image ----------
async function classify(file) {
  const bitmap = await createImageBitmap(file);
  const small = document.createElement('canvas');
  small.width = small.height = 32;
  const sctx = small.getContext('2d');
  sctx.drawImage(bitmap, 0, 0, 32, 32);
  const rgba = sctx.getImageData(0, 0, 32, 32).data;
  const rgb = new Uint8Array(3072);
  for (let p = 0; p < 1024; p++) { rgb[3 * p] = rgba[4 * p]; rgb[3 * p + 1] = rgba[4 * p + 1]; rgb[3 * p + 2] = rgba[4 * p + 2]; }
  const preview = $('image-preview').getContext('2d');
  preview.imageSmoothingEnabled = false;
  preview.drawImage(small, 0, 0, 128, 128);
  const top = JSON.parse(await state.session.classify(rgb));
  $('top3').innerHTML = top.map((t) => `<li>${t.class} — ${(100 * t.probability).toFixed(1)}%</li>`).join('');
}

// ---------- wiring ----------
function wire() {
  $('load-server').onclick = () => guarded('data-status', loadFromServer);
  $('data-files').onchange = (e) => guarded('data-status', () => loadFromFiles(e.target.files));
  const zone = $('drop-zone');
  zone.ondragover = (e) => { e.preventDefault(); zone.classList.add('over'); };
  zone.ondragleave = () => zone.classList.remove('over');
  zone.ondrop = (e) => { e.preventDefault(); zone.classList.remove('over'); guarded('data-status', () => loadFromFiles(e.dataTransfer.files)); };
  $('weights-file').onchange = (e) => guarded('weights-status', async () => {
    const f = e.target.files[0];
    loadWeightBytes(f.name, new Uint8Array(await f.arrayBuffer()));
  });
  $('load-pretrained').onclick = () => guarded('weights-status', loadPretrained);
  $('weights-url-load').onclick = () => guarded('weights-status', async () => {
    const url = $('weights-url').value.trim();
    const res = await fetch(url);
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    loadWeightBytes(url.split('/').pop() || url, new Uint8Array(await res.arrayBuffer()));
  });
  $('evaluate').onclick = () => guarded('weights-status', async () => {
    say('weights-status', 'evaluating…');
    const r = JSON.parse(await state.session.evaluate($('tta').checked));
    say('weights-status', `test accuracy ${(100 * r.accuracy).toFixed(2)}%, loss ${r.loss.toFixed(4)}`);
    await showResults();
  });
  $('download').onclick = () => guarded('weights-status', download);
  $('start').onclick = () => guarded('train-status', train);
  $('pause').onclick = () => { state.paused = !state.paused; $('pause').textContent = state.paused ? 'Resume' : 'Pause'; say('train-status', state.paused ? 'paused' : 'resumed'); };
  $('stop').onclick = () => { state.stop = true; state.paused = false; $('pause').textContent = 'Pause'; };
  $('lr-find').onclick = () => guarded('train-status', lrFind);
  $('image-file').onchange = (e) => guarded('train-status', () => classify(e.target.files[0]));
}

async function main() {
  drawCharts();
  if (!navigator.gpu) {
    say('gpu-status', 'WebGPU is not available in this browser, so nothing can be trained here. Use a browser with WebGPU enabled (Chrome/Edge 113+, or Firefox/Safari with WebGPU turned on).', true);
    return;
  }
  const b = await bindings();
  CLASSES = JSON.parse(b.classes());
  FILES = JSON.parse(b.data_files());
  useRecipe(b, $('recipe').value);
  $('recipe').onchange = (e) => useRecipe(b, e.target.value);
  $('optimizer').onchange = (e) => useOptimizer(b, e.target.value);
  state.adapter = await describeAdapter();
  // Without an adapter wgpu fails below and says so; WebGPU's default limits stand in.
  const lim = state.adapter ? state.adapter.limits : { maxStorageBufferBindingSize: 2 ** 27, maxBufferSize: 2 ** 28 };
  try {
    state.session = await b.Session.create(lim.maxStorageBufferBindingSize, lim.maxBufferSize);
  } catch (e) {
    say('gpu-status', `WebGPU could not start: ${e.message || e}`, true);
    return;
  }
  applyGpuConv();
  $('gpu-conv').onchange = applyGpuConv;
  if (state.adapter && state.adapter.cpu) {
    const w = $('gpu-warning');
    w.textContent = `${state.adapter.name} is a CPU implementation of WebGPU, not a GPU: training here is `
      + 'for trying the page, not for real runs (a width-1 epoch would take hours). Use a browser on a '
      + 'machine with a GPU, or the native trainer (`cargo run --release`), which trains on the CPU '
      + 'far faster.';
    w.hidden = false;
  }
  wire();
  state.ready = true;
}

main();
