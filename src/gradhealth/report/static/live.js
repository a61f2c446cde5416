/* gradhealth's live page (report/live.py): polls /api/run on its own server, draws with uPlot.
   Every text from the store is set with textContent: names are never parsed as markup. */
(function () {
  "use strict";
  var POLL_MS = 1000;
  var VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89",
                 "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  var st = {after: null, step: [], norm: [], loss: [], bad: [], charts: {}, layersAt: null,
            flowKey: null};

  function $(id) { return document.getElementById(id); }
  function fmt(v) {
    if (v === null || v === undefined) { return "–"; }
    if (typeof v !== "number") { return String(v); }
    if (Number.isInteger(v) && Math.abs(v) < 1e6) { return v.toLocaleString("en"); }
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2)
      : String(Number(v.toPrecision(4)));
  }
  function node(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) { n.className = cls; }
    if (text !== undefined && text !== null) { n.textContent = String(text); }
    return n;
  }
  function short(name) {
    name = name || "<model>";
    return name.length <= 24 ? name : "…" + name.slice(-23);
  }
  function setState(cls, text) {
    var s = $("state");
    s.className = "state " + cls;
    s.textContent = text;
  }
  function width(el) { return Math.max(320, el.clientWidth || 600); }

  function redLines(u) {  // skipped and non-finite steps on the norm chart
    var ctx = u.ctx, xs = u.data[0];
    ctx.save();
    ctx.strokeStyle = "rgba(198,40,40,0.75)";
    ctx.lineWidth = 1;
    for (var i = 0; i < st.bad.length; i++) {
      if (!st.bad[i]) { continue; }
      var x = Math.round(u.valToPos(xs[i], "x", true));
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function lineChart(id, label, colour, log, extra) {
    var el = $(id);
    var opts = {width: width(el), height: 240, legend: {show: true},
      scales: {x: {time: false}, y: log ? {distr: 3} : {}},
      axes: [{label: "step"}, {size: 60, values: function (u, v) { return v.map(fmt); }}],
      series: [{label: "step"}, {label: label, stroke: colour, width: 1.5, spanGaps: false,
                                 points: {show: false}}]};
    if (extra) { opts.hooks = {draw: [extra]}; }
    return new uPlot(opts, [[], []], el);
  }

  function ensureCharts() {
    if (st.charts.norm) { return; }
    st.charts.norm = lineChart("chart-norm", "global norm", "#1f5fa8", true, redLines);
    st.charts.loss = lineChart("chart-loss", "loss", "#2e7d32", false, null);
  }

  function positive(v) { return v !== null && v > 0 ? v : null; }

  function applySteps(s) {
    for (var i = 0; i < s.step.length; i++) {
      st.step.push(s.step[i]);
      st.norm.push(positive(s.global_norm[i]));
      st.loss.push(s.loss[i]);
      st.bad.push(s.skipped[i] > 0 || s.nonfinite[i] > 0);
    }
    if (s.step.length) {
      ensureCharts();
      st.charts.norm.setData([st.step, st.norm]);
      st.charts.loss.setData([st.step, st.loss]);
    }
    $("steps").textContent = fmt(st.step.length);
    $("norm").textContent = fmt(lastOf(st.norm));
    $("loss").textContent = fmt(lastOf(st.loss));
  }
  function lastOf(xs) {
    for (var i = xs.length - 1; i >= 0; i--) { if (xs[i] !== null) { return xs[i]; } }
    return null;
  }

  function applyIncidents(list) {
    var box = $("incidents");
    $("incident-count").textContent = fmt(list.length);
    box.replaceChildren();
    if (!list.length) { box.appendChild(node("p", "small", "None so far.")); return; }
    list.forEach(function (g) {
      var card = node("div", "incident " + g.severity);
      card.dataset.kind = g.kind;
      card.dataset.module = g.module;
      card.dataset.severity = g.severity;
      var h = node("h3");
      h.appendChild(node("span", "badge " + g.severity, g.severity));
      h.appendChild(document.createTextNode(g.kind + " in "));
      h.appendChild(node("code", null, g.module || "<model>"));
      var when = g.first_step === null ? "pre-flight" : (g.first_step === g.last_step
        ? "step " + g.first_step : "steps " + g.first_step + "–" + g.last_step);
      h.appendChild(node("span", "count", "×" + g.count + " · " + when));
      card.appendChild(h);
      if (g.message) { card.appendChild(node("p", null, g.message)); }
      var more = node("details");  // the numbers and the remedy, one click away
      more.appendChild(node("summary", "small", "evidence and remedy"));
      var ev = Object.keys(g.evidence || {}).map(function (k) {
        return k + " " + fmt(g.evidence[k]);
      }).join(" · ");
      if (ev) { more.appendChild(node("p", "small", ev)); }
      more.appendChild(node("p", "remedy", "remedy: " + g.remedy));
      card.appendChild(more);
      box.appendChild(card);
    });
  }

  function applySkipped(list, total) {
    var box = $("skipped");
    $("skipped-count").textContent = fmt(total);
    box.replaceChildren();
    if (!list.length) { box.appendChild(node("p", "small", "None.")); return; }
    var table = node("table"), head = node("tr");
    ["step", "reason", "module"].forEach(function (t) { head.appendChild(node("th", null, t)); });
    table.appendChild(head);
    list.slice().reverse().forEach(function (s) {
      var tr = node("tr");
      tr.appendChild(node("td", null, s.step));
      tr.appendChild(node("td", null, s.reason));
      var td = node("td");
      if (s.module !== null) { td.appendChild(node("code", null, s.module || "<model>")); }
      else { td.textContent = "–"; }
      tr.appendChild(td);
      table.appendChild(tr);
    });
    if (total > list.length) { box.appendChild(node("p", "small", "the latest " + list.length + " of " + total)); }
    box.appendChild(table);
  }

  function applyFlow(flow) {
    var el = $("chart-flow");
    if (!flow.length) { return; }
    var names = flow[0].layers, key = names.join("\u0000") + "|" + flow.length;
    var xs = names.map(function (_, i) { return i; });
    var data = [xs].concat(flow.map(function (f) { return f.values.map(positive); }));
    if (st.flowKey !== key) {
      if (st.charts.flow) { st.charts.flow.destroy(); }
      var colours = ["#1f5fa8", "#6a1b9a", "#2e7d32"];
      st.charts.flow = new uPlot({width: width(el), height: 260,
        scales: {x: {time: false}, y: {distr: 3}},
        axes: [{values: function (u, splits) {
                  return splits.map(function (i) { return Number.isInteger(i) && names[i] !== undefined ? short(names[i]) : ""; });
                }, size: 70, rotate: -30, incrs: [1, 2, 5, 10, 20, 50, 100]},
               {size: 60, values: function (u, v) { return v.map(fmt); }}],
        series: [{label: "layer", value: function (u, i) { return i === null ? "–" : names[i]; }}].concat(
          flow.map(function (f, k) {
            return {label: f.label, stroke: colours[k % 3], width: 1.5, dash: k ? [6, 4] : undefined,
                    points: {show: names.length <= 60}};
          }))}, data, el);
      st.flowKey = key;
    } else {
      st.charts.flow.setData(data);
    }
  }

  function applyHeatmaps(maps) {
    var box = $("heatmaps");
    box.replaceChildren();
    maps.forEach(function (m) {
      var wrap = node("div", "heatmap");
      wrap.dataset.stat = m.stat;
      wrap.appendChild(node("h3", null, m.label + " per layer and step"));
      var canvas = document.createElement("canvas");
      var left = 170, bottom = 28, rowH = Math.max(4, Math.min(18, Math.floor(360 / m.layers.length)));
      var w = Math.max(400, Math.min(1260, box.clientWidth || 1200));
      var h = rowH * m.layers.length + bottom + 22;
      canvas.width = w;
      canvas.height = h;
      wrap.appendChild(canvas);
      box.appendChild(wrap);
      drawHeatmap(canvas.getContext("2d"), m, left, bottom, rowH, w, h);
    });
  }

  function drawHeatmap(ctx, m, left, bottom, rowH, w, h) {
    var lo = Infinity, hi = -Infinity;
    m.log10.forEach(function (row) { row.forEach(function (v) {
      if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    var plotW = w - left - 90, colW = plotW / Math.max(1, m.steps.length);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#1d2329";
    ctx.textBaseline = "middle";
    for (var r = 0; r < m.layers.length; r++) {
      var y = r * rowH;
      if (rowH >= 9 || r % Math.ceil(9 / rowH) === 0) {
        ctx.fillStyle = "#1d2329";
        ctx.textAlign = "right";
        ctx.fillText(short(m.layers[r]), left - 6, y + rowH / 2);
      }
      for (var c = 0; c < m.steps.length; c++) {
        var v = m.log10[r][c];
        ctx.fillStyle = v === null ? "#d0d4d8" : colour(v, lo, hi);
        ctx.fillRect(left + c * colW, y, Math.ceil(colW), rowH);
      }
    }
    var base = m.layers.length * rowH;
    ctx.fillStyle = "#555";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("step " + m.steps[0], left, base + 6);
    ctx.textAlign = "right";
    ctx.fillText("step " + m.steps[m.steps.length - 1], left + plotW, base + 6);
    for (var k = 0; k < 10; k++) {  // colour bar, log10 scale
      ctx.fillStyle = VIRIDIS[9 - k];
      ctx.fillRect(w - 80, 4 + k * 12, 14, 12);
    }
    ctx.fillStyle = "#555";
    ctx.textAlign = "left";
    if (isFinite(hi)) {
      ctx.fillText(fmt(Math.pow(10, hi)), w - 62, 2);
      ctx.fillText(fmt(Math.pow(10, lo)), w - 62, 112);
    }
  }

  function colour(v, lo, hi) {
    var t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    return VIRIDIS[Math.max(0, Math.min(9, Math.floor(t * 9.999)))];
  }

  function applyAbout(a) {
    var bits = [];
    if (a.script) { bits.push("script " + a.script); }
    if (a.model) { bits.push("model " + a.model + (a.n_params ? " (" + fmt(a.n_params) + " parameters)" : "")); }
    if (a.optimizer) { bits.push("optimizer " + a.optimizer); }
    if (a.device) { bits.push(a.device + (a.dtype ? " " + a.dtype : "")); }
    $("about").textContent = bits.join(" · ");
  }

  function apply(d) {
    if (d.waiting) { setState("", d.message); return; }
    applyAbout(d.about);
    applySteps(d.steps);
    st.after = d.last_step;
    applyIncidents(d.incidents);
    applySkipped(d.skipped, d.n_skipped);
    if (d.layers_at !== st.layersAt) {  // the per-layer views are rebuilt every few seconds
      st.layersAt = d.layers_at;
      applyFlow(d.flow);
      applyHeatmaps(d.heatmaps);
    }
    if (d.live) { setState("live", "live: the run is being written"); }
    else if (d.outcome) { setState(/finished/.test(d.outcome) ? "ended" : "bad", "run ended: " + d.outcome); }
    else if (d.stopped) { setState("bad", "the run stopped without closing its store (killed?)"); }
  }

  function poll() {
    var url = "/api/run" + (st.after === null || st.after === undefined ? "" : "?after=" + st.after);
    fetch(url, {cache: "no-store"}).then(function (r) {
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    }).then(function (d) {
      apply(d);
      if (d.waiting || d.live) { setTimeout(poll, POLL_MS); }
    }).catch(function () {
      setState("bad", "the server does not answer: showing the last numbers");
      setTimeout(poll, POLL_MS * 5);
    });
  }

  window.addEventListener("resize", function () {
    ["norm", "loss", "flow"].forEach(function (k) {
      var c = st.charts[k];
      if (c) { c.setSize({width: width(c.root.parentNode), height: c.height}); }
    });
  });
  poll();
}());
