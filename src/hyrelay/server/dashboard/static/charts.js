// A small time-series line chart on a <canvas>: enough for the dashboard, nothing more.
"use strict";

(function (global) {
  /** Draw `points` ([{t, v}], t in seconds) over the last `windowSeconds` into `canvas`. */
  function drawChart(canvas, points, options) {
    const { color = "#2f6fde", windowSeconds = 120, format = String, now = Date.now() / 1000 } = options || {};
    const ratio = global.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || 140;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const start = now - windowSeconds;
    const visible = points.filter((p) => p.t >= start);
    const { max, step } = scale(Math.max(...visible.map((p) => p.v), 0), options && options.integer, options && options.binary);
    const ticks = [];
    for (let v = 0; v <= max + step / 2; v += step) ticks.push(v);

    // Room on the left for the widest axis label.
    ctx.font = "11px system-ui, sans-serif";
    const labelWidth = Math.max(...ticks.map((v) => ctx.measureText(format(v)).width));
    const pad = { left: Math.ceil(labelWidth) + 12, right: 12, top: 10, bottom: 20 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const x = (t) => pad.left + ((t - start) / windowSeconds) * plotW;
    const y = (v) => pad.top + plotH - (v / max) * plotH;

    // Grid and labels: a line per tick, a time mark each 30 s.
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of ticks) {
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(pad.left + plotW, yy);
      ctx.stroke();
      ctx.fillText(format(v), pad.left - 6, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let s = 0; s <= windowSeconds; s += 30) {
      ctx.fillText(s === windowSeconds ? "now" : `-${windowSeconds - s}s`, x(start + s), pad.top + plotH + 5);
    }
    if (visible.length < 2) return;

    // Area under the line, then the line.
    ctx.beginPath();
    ctx.moveTo(x(visible[0].t), y(0));
    for (const p of visible) ctx.lineTo(x(p.t), y(p.v));
    ctx.lineTo(x(visible[visible.length - 1].t), y(0));
    ctx.closePath();
    ctx.globalAlpha = 0.12;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.beginPath();
    visible.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
  }

  /** Axis top and tick step: about four ticks of 1, 2 or 5 times a power of ten (of a power of 1024 too
   *  when `binary`, so byte axes read 512 KiB, 1 MiB rather than 488.3 KiB). */
  function scale(top, integer, binary) {
    if (top <= 0) return { max: 1, step: integer ? 1 : 0.25 };
    const rough = top / 4;
    const unit = binary && rough >= 1024 ? Math.pow(1024, Math.floor(Math.log(rough) / Math.log(1024))) : 1;
    const power = Math.pow(10, Math.floor(Math.log10(rough / unit)));
    let step = [1, 2, 5, 10].map((m) => m * power * unit).find((s) => s >= rough);
    if (integer) step = Math.max(1, Math.round(step));
    return { max: Math.ceil(top / step) * step, step };
  }

  global.HyrelayCharts = { drawChart };
})(window);
