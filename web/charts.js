// Small canvas line charts for the live training view (no chart library: nothing to download).

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd'];

function niceTicks(min, max, count) {
  if (!(max > min)) { max = min + 1; }
  const step = Math.pow(10, Math.floor(Math.log10((max - min) / count)));
  const err = ((max - min) / count) / step;
  const mult = err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
  const s = step * mult;
  const ticks = [];
  for (let v = Math.ceil(min / s) * s; v <= max + s * 1e-9; v += s) ticks.push(v);
  return ticks;
}

function fmt(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-2) return v.toExponential(0);
  return String(Math.round(v * 1000) / 1000);
}

/**
 * Draws `series` ([{label, points: [[x, y], ...]}]) on `canvas`.
 * options: {xlabel, ylabel, logx, marker: {x, label}, ymin, ymax}
 */
export function lineChart(canvas, series, options = {}) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height;
  const pad = { l: 58, r: 14, t: 14, b: 40 };
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, W, H);
  const tx = (x) => (options.logx ? Math.log10(x) : x);
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(y) && Number.isFinite(tx(x)));
  ctx.fillStyle = '#667';
  ctx.font = '12px system-ui, sans-serif';
  if (all.length === 0) {
    ctx.fillText('no data yet', W / 2 - 30, H / 2);
    return;
  }
  let xmin = Math.min(...all.map((p) => tx(p[0]))), xmax = Math.max(...all.map((p) => tx(p[0])));
  let ymin = options.ymin ?? Math.min(...all.map((p) => p[1])), ymax = options.ymax ?? Math.max(...all.map((p) => p[1]));
  if (xmax === xmin) { xmin -= 0.5; xmax += 0.5; }
  if (ymax === ymin) { ymin -= 0.5; ymax += 0.5; }
  const X = (x) => pad.l + ((tx(x) - xmin) / (xmax - xmin)) * (W - pad.l - pad.r);
  const Y = (y) => H - pad.b - ((Math.min(Math.max(y, ymin), ymax) - ymin) / (ymax - ymin)) * (H - pad.t - pad.b);
  // grid and axes
  ctx.strokeStyle = '#e4e7ee';
  ctx.lineWidth = 1;
  for (const v of niceTicks(ymin, ymax, 5)) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(v)); ctx.lineTo(W - pad.r, Y(v)); ctx.stroke();
    ctx.fillText(fmt(v), 4, Y(v) + 4);
  }
  const xt = options.logx ? niceTicks(Math.floor(xmin), Math.ceil(xmax), 6).filter((v) => Number.isInteger(v)) : niceTicks(xmin, xmax, 6);
  for (const v of xt) {
    const x = options.logx ? Math.pow(10, v) : v;
    if (tx(x) < xmin || tx(x) > xmax) continue;
    ctx.beginPath(); ctx.moveTo(X(x), pad.t); ctx.lineTo(X(x), H - pad.b); ctx.stroke();
    ctx.fillText(options.logx ? `1e${v}` : fmt(v), X(x) - 10, H - pad.b + 16);
  }
  ctx.strokeStyle = '#556';
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, H - pad.b); ctx.lineTo(W - pad.r, H - pad.b); ctx.stroke();
  if (options.xlabel) ctx.fillText(options.xlabel, W / 2 - 20, H - 6);
  // series
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => Number.isFinite(y) && Number.isFinite(tx(x)));
    ctx.strokeStyle = ctx.fillStyle = s.color || COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach(([x, y], j) => (j ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    if (s.dots || pts.length < 3) pts.forEach(([x, y]) => { ctx.beginPath(); ctx.arc(X(x), Y(y), 3, 0, 7); ctx.fill(); });
    ctx.fillText(s.label, W - pad.r - 150, pad.t + 14 + 16 * i);
    ctx.fillRect(W - pad.r - 170, pad.t + 8 + 16 * i, 14, 3);
  });
  if (options.marker && Number.isFinite(tx(options.marker.x))) {
    ctx.strokeStyle = ctx.fillStyle = '#b3261e';
    ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(X(options.marker.x), pad.t); ctx.lineTo(X(options.marker.x), H - pad.b); ctx.stroke();
    ctx.setLineDash([]);
    if (options.marker.label) ctx.fillText(options.marker.label, Math.min(X(options.marker.x) + 4, W - 150), pad.t + 60);
  }
}
