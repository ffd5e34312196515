// veil review: the annotator's page. Plain JavaScript and a canvas; every request goes
// to this server. Boxes are kept in image pixels (as displayed); the view maps them to
// the screen: screen = image * scale + offset.
"use strict";

(function () {
  const TOKEN_KEY = "veil-review-token";
  const HANDLE = 6;          // half size of a resize handle, screen px
  const MIN_BOX = 3;         // smaller boxes (image px) are a click, not a box
  const FEW = 3;             // "no faces" over more boxes than this asks first
  const SAME_FACE_IOU = 0.5; // a box of theirs and one of yours this close are the same face
  const COLORS = {
    box: "#ffd400", uncertain: "#ff9f1a", selected: "#25e0ff", truth: "#3ddc84",
    theirs: "#e36bff", answer: "#ff5d73", drawing: "#ffffff",
  };

  // -- token: from the link's #fragment into this tab's sessionStorage, never a cookie ----
  (function takeToken() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  })();

  function headers(extra) {
    const out = Object.assign({}, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) out["Authorization"] = "Bearer " + token;
    return out;
  }

  async function api(path, options) {
    const opts = Object.assign({ credentials: "omit" }, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    let body = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) body = await response.json();
    return { status: response.status, ok: response.ok, body: body, response: response };
  }

  function keyPath(key) {
    return key.split("/").map(encodeURIComponent).join("/");
  }

  function detail(body, fallback) {
    if (!body || body.detail === undefined) return fallback;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => (d.msg || "") + (d.loc ? " (" + d.loc.join(".") + ")" : "")).join("; ");
    }
    return fallback;
  }

  // -- elements --------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const stage = $("stage");

  // -- state -----------------------------------------------------------------------------
  const state = {
    session: null,
    item: null,          // the item from the server
    image: null,         // HTMLImageElement of the item
    boxes: [],           // [{x0, y0, x1, y1, score}] in image px
    selected: -1,
    undo: [],
    redo: [],
    original: "[]",      // the boxes as shown, to tell unsaved edits
    drawMode: false,     // R: every drag draws a new box (Shift+drag does too)
    confirm: null,       // {key, run}: an action waiting for "yes" (Esc cancels)
    overlays: [],        // [{boxes, color, dash, label}]
    locked: false,       // showing a result that needs "Continue"
    shownAt: 0,
    history: [],         // keys seen, in order
    pos: -1,             // index of the current item in history
    cursor: null,        // the server's cursor after the newest item seen
    filter: "todo",
    order: "priority",
    busy: false,
    view: { scale: 1, ox: 0, oy: 0, fitted: true },
    drag: null,          // current mouse gesture
    spaceDown: false,
    hover: null,
  };

  // -- view ------------------------------------------------------------------------------
  function resizeCanvas() {
    const dpr = window.devicePixelRatio || 1;
    const rect = stage.getBoundingClientRect();
    canvas.width = Math.max(1, Math.round(rect.width * dpr));
    canvas.height = Math.max(1, Math.round(rect.height * dpr));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (state.view.fitted) fit();
    draw();
  }

  function stageSize() {
    const rect = stage.getBoundingClientRect();
    return { w: rect.width, h: rect.height };
  }

  function fit() {
    const item = state.item;
    if (!item) return;
    const { w, h } = stageSize();
    const pad = 16;
    const scale = Math.min((w - 2 * pad) / item.width, (h - 2 * pad) / item.height);
    state.view = {
      scale: scale, fitted: true,
      ox: (w - item.width * scale) / 2, oy: (h - item.height * scale) / 2,
    };
  }

  function toScreen(x, y) {
    const v = state.view;
    return { x: x * v.scale + v.ox, y: y * v.scale + v.oy };
  }

  function toImage(sx, sy) {
    const v = state.view;
    return { x: (sx - v.ox) / v.scale, y: (sy - v.oy) / v.scale };
  }

  function clampPoint(p) {
    const item = state.item;
    return { x: Math.min(Math.max(p.x, 0), item.width), y: Math.min(Math.max(p.y, 0), item.height) };
  }

  function zoomAt(sx, sy, factor) {
    const v = state.view;
    const item = state.item;
    if (!item) return;
    const { w, h } = stageSize();
    const fitScale = Math.min(w / item.width, h / item.height);
    const scale = Math.min(Math.max(v.scale * factor, fitScale * 0.5), 40);
    const p = toImage(sx, sy);
    state.view = { scale: scale, ox: sx - p.x * scale, oy: sy - p.y * scale, fitted: false };
    draw();
  }

  // -- drawing ---------------------------------------------------------------------------
  function strokeBox(b, color, width, dash) {
    const a = toScreen(b.x0, b.y0);
    const c = toScreen(b.x1, b.y1);
    ctx.save();
    ctx.setLineDash(dash || []);
    ctx.lineWidth = width + 2;
    ctx.strokeStyle = "rgba(0,0,0,0.55)";
    ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
    ctx.lineWidth = width;
    ctx.strokeStyle = color;
    ctx.strokeRect(a.x, a.y, c.x - a.x, c.y - a.y);
    ctx.restore();
    return { a: a, c: c };
  }

  // Handles sit just outside the box, so its whole inside stays free for moving it: a
  // 7 px face at fit zoom is smaller than one handle.
  function handles(b) {
    const a = toScreen(b.x0, b.y0);
    const c = toScreen(b.x1, b.y1);
    const mx = (a.x + c.x) / 2;
    const my = (a.y + c.y) / 2;
    const o = HANDLE + 1;
    return [
      { name: "nw", x: a.x - o, y: a.y - o }, { name: "n", x: mx, y: a.y - o },
      { name: "ne", x: c.x + o, y: a.y - o }, { name: "e", x: c.x + o, y: my },
      { name: "se", x: c.x + o, y: c.y + o }, { name: "s", x: mx, y: c.y + o },
      { name: "sw", x: a.x - o, y: c.y + o }, { name: "w", x: a.x - o, y: my },
    ];
  }

  function draw() {
    const { w, h } = stageSize();
    ctx.clearRect(0, 0, w, h);
    const item = state.item;
    const zoom = $("zoom");
    if (!item || !state.image) {
      zoom.textContent = "";
      return;
    }
    const a = toScreen(0, 0);
    ctx.imageSmoothingEnabled = state.view.scale < 3;
    ctx.drawImage(state.image, a.x, a.y, item.width * state.view.scale, item.height * state.view.scale);
    const uncertain = state.session ? state.session.uncertain_below : 0.5;
    state.boxes.forEach((b, i) => {
      if (i === state.selected) return;
      const low = b.score !== null && b.score !== undefined && b.score < uncertain;
      strokeBox(b, low ? COLORS.uncertain : COLORS.box, 2, low ? [6, 4] : null);
    });
    for (const overlay of state.overlays) {
      for (const b of overlay.boxes) {
        const s = strokeBox(b, overlay.color, b.differs === false ? 1.5 : 3, overlay.dash);
        if (overlay.label) {
          ctx.font = "11px system-ui, sans-serif";
          const w = ctx.measureText(overlay.label).width + 6;
          ctx.fillStyle = overlay.color;
          ctx.fillRect(s.a.x, s.a.y - 14, w, 14);
          ctx.fillStyle = "#000";
          ctx.fillText(overlay.label, s.a.x + 3, s.a.y - 3);
        }
      }
    }
    if (state.selected >= 0 && state.boxes[state.selected]) {
      const b = state.boxes[state.selected];
      const s = strokeBox(b, COLORS.selected, 2.5);
      ctx.fillStyle = "rgba(37,224,255,0.10)";
      ctx.fillRect(s.a.x, s.a.y, s.c.x - s.a.x, s.c.y - s.a.y);
      for (const hnd of handles(b)) {
        ctx.fillStyle = "#ffffff";
        ctx.strokeStyle = "#0b5563";
        ctx.lineWidth = 1.5;
        ctx.fillRect(hnd.x - HANDLE, hnd.y - HANDLE, 2 * HANDLE, 2 * HANDLE);
        ctx.strokeRect(hnd.x - HANDLE, hnd.y - HANDLE, 2 * HANDLE, 2 * HANDLE);
      }
    }
    const d = state.drag;
    if (d && d.kind === "draw" && d.box) strokeBox(d.box, COLORS.drawing, 1.5, [5, 4]);
    zoom.textContent = Math.round(state.view.scale * 100) + "%";
    drawMinimap();
  }

  // Zoomed in: a small overview of the whole image with the part on screen outlined.
  function drawMinimap() {
    const mini = $("minimap");
    const item = state.item;
    const { w, h } = stageSize();
    const a = item && toImage(0, 0);
    const c = item && toImage(w, h);
    const cropped = item && state.image &&
      (a.x > 0.5 || a.y > 0.5 || c.x < item.width - 0.5 || c.y < item.height - 0.5);
    if (!cropped) { mini.hidden = true; return; }
    mini.hidden = false;
    const side = 160;
    const scale = Math.min(side / item.width, side / item.height);
    const mw = Math.round(item.width * scale);
    const mh = Math.round(item.height * scale);
    const dpr = window.devicePixelRatio || 1;
    if (mini.width !== mw * dpr || mini.height !== mh * dpr) {
      mini.width = mw * dpr;
      mini.height = mh * dpr;
      mini.style.width = mw + "px";
      mini.style.height = mh + "px";
    }
    const m = mini.getContext("2d");
    m.setTransform(dpr, 0, 0, dpr, 0, 0);
    m.drawImage(state.image, 0, 0, mw, mh);
    m.fillStyle = "rgba(0,0,0,0.45)";
    m.fillRect(0, 0, mw, mh);
    const x0 = Math.max(a.x, 0) * scale;
    const y0 = Math.max(a.y, 0) * scale;
    const x1 = Math.min(c.x, item.width) * scale;
    const y1 = Math.min(c.y, item.height) * scale;
    m.drawImage(state.image, x0 / scale, y0 / scale, (x1 - x0) / scale, (y1 - y0) / scale,
                x0, y0, x1 - x0, y1 - y0);
    m.strokeStyle = COLORS.selected;
    m.lineWidth = 1.5;
    m.strokeRect(x0 + 0.5, y0 + 0.5, Math.max(x1 - x0 - 1, 1), Math.max(y1 - y0 - 1, 1));
    mini.dataset.view = [x0, y0, x1, y1].map((v) => (v / scale).toFixed(1)).join(",");
  }

  // A click on the minimap centres the view there.
  function onMinimapDown(ev) {
    const item = state.item;
    if (!item) return;
    const rect = $("minimap").getBoundingClientRect();
    const scale = rect.width / item.width;
    const px = (ev.clientX - rect.left) / scale;
    const py = (ev.clientY - rect.top) / scale;
    const { w, h } = stageSize();
    state.view.ox = w / 2 - px * state.view.scale;
    state.view.oy = h / 2 - py * state.view.scale;
    state.view.fitted = false;
    draw();
    ev.preventDefault();
  }

  // -- hit testing -----------------------------------------------------------------------
  function handleAt(sx, sy) {
    if (state.selected < 0) return null;
    for (const hnd of handles(state.boxes[state.selected])) {
      if (Math.abs(sx - hnd.x) <= HANDLE + 2 && Math.abs(sy - hnd.y) <= HANDLE + 2) return hnd.name;
    }
    return null;
  }

  function boxAt(sx, sy) {
    const p = toImage(sx, sy);
    const inside = (b) => p.x >= b.x0 && p.x <= b.x1 && p.y >= b.y0 && p.y <= b.y1;
    if (state.selected >= 0 && inside(state.boxes[state.selected])) return state.selected;
    let best = -1;
    let bestArea = Infinity;
    state.boxes.forEach((b, i) => {   // the smallest box under the pointer: nested faces stay reachable
      const area = (b.x1 - b.x0) * (b.y1 - b.y0);
      if (inside(b) && area < bestArea) { best = i; bestArea = area; }
    });
    return best;
  }

  const CURSORS = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize",
                    n: "ns-resize", s: "ns-resize", e: "ew-resize", w: "ew-resize" };

  // -- editing ---------------------------------------------------------------------------
  function copyState() {
    return { boxes: state.boxes.map((b) => Object.assign({}, b)), selected: state.selected };
  }

  function snapshot() {
    state.undo.push(copyState());
    if (state.undo.length > 100) state.undo.shift();
    state.redo = [];
  }

  function undo() {
    const last = state.undo.pop();
    if (!last) return;
    state.redo.push(copyState());
    state.boxes = last.boxes;
    state.selected = last.selected;
    updatePanel();
    draw();
  }

  function redo() {
    const next = state.redo.pop();
    if (!next) return;
    state.undo.push(copyState());
    state.boxes = next.boxes;
    state.selected = next.selected;
    updatePanel();
    draw();
  }

  function dirty() {
    return !!state.item && !state.locked && JSON.stringify(answerBoxes()) !== state.original;
  }

  // Ask before ``run`` when it would throw away work; the same key again, or the button,
  // says yes; Esc says no.
  function confirmFirst(text, key, yes, run) {
    state.confirm = { key: key, run: run };
    message(escapeHtml(text), "warn", [
      { label: yes, primary: true, run: () => { state.confirm = null; message(null); run(); } },
      { label: "Cancel (Esc)", run: cancelConfirm },
    ]);
  }

  function cancelConfirm() {
    state.confirm = null;
    message(null);
  }

  function leaving(key, run) {
    if (!dirty()) return run();
    const n = Math.abs(answerBoxes().length - JSON.parse(state.original).length);
    confirmFirst("This image has unsaved edits" +
                 (n ? " (" + plural(n, "box", "boxes") + " more or fewer)" : "") +
                 ". Leave it and discard them?", key, "Discard edits (" + key + ")", run);
  }

  function noFaces() {
    const n = state.boxes.length;
    if (n <= FEW) return submit([]);
    confirmFirst("Save “no faces here” and discard all " + n + " boxes of this image?", "N",
                 "Discard " + n + " boxes (N)", () => submit([]));
  }

  function setDrawMode(on) {
    state.drawMode = on;
    $("mode").hidden = !on;
    canvas.classList.toggle("drawing", on);
  }

  function deleteSelected() {
    if (state.selected < 0) return false;
    snapshot();
    state.boxes.splice(state.selected, 1);
    state.selected = -1;
    updatePanel();
    draw();
    return true;
  }

  function normalised(b) {
    return { x0: Math.min(b.x0, b.x1), y0: Math.min(b.y0, b.y1),
             x1: Math.max(b.x0, b.x1), y1: Math.max(b.y0, b.y1), score: b.score };
  }

  // Pointer position in canvas CSS pixels (offsetX/Y are rounded; clientX/Y are not).
  function pointer(ev) {
    const rect = canvas.getBoundingClientRect();
    return { x: ev.clientX - rect.left, y: ev.clientY - rect.top };
  }

  function onMouseDown(ev) {
    if (!state.item || state.locked) return;
    canvas.focus();
    const { x: sx, y: sy } = pointer(ev);
    if (ev.button === 1 || ev.button === 2 || state.spaceDown) {
      state.drag = { kind: "pan", sx: sx, sy: sy, ox: state.view.ox, oy: state.view.oy };
      canvas.style.cursor = "grabbing";
      ev.preventDefault();
      return;
    }
    if (ev.button !== 0) return;
    if (state.confirm) cancelConfirm();
    const drawing = state.drawMode || ev.shiftKey;
    const onSelected = state.selected >= 0 && boxAt(sx, sy) === state.selected;
    const handle = drawing || onSelected ? null : handleAt(sx, sy);
    if (handle) {
      snapshot();
      const p = toImage(sx, sy);
      state.drag = { kind: "resize", handle: handle, index: state.selected, px: p.x, py: p.y,
                     start: Object.assign({}, state.boxes[state.selected]) };
      return;
    }
    const hit = drawing ? -1 : boxAt(sx, sy);
    if (hit >= 0) {
      snapshot();
      state.selected = hit;
      const p = toImage(sx, sy);
      state.drag = { kind: "move", index: hit, px: p.x, py: p.y,
                     start: Object.assign({}, state.boxes[hit]), moved: false };
      updatePanel();
      draw();
      return;
    }
    const p = clampPoint(toImage(sx, sy));
    state.drag = { kind: "draw", px: p.x, py: p.y, box: null };
    state.selected = -1;
    draw();
  }

  function onMouseMove(ev) {
    if (!state.item) return;
    const { x: sx, y: sy } = pointer(ev);
    const d = state.drag;
    const item = state.item;
    if (!d) {
      if (state.locked) { canvas.style.cursor = "default"; return; }
      const hit = boxAt(sx, sy);
      const handle = hit >= 0 && hit === state.selected ? null : handleAt(sx, sy);
      canvas.style.cursor = state.spaceDown ? "grab"
        : state.drawMode || ev.shiftKey ? "crosshair"
        : handle ? CURSORS[handle] : hit >= 0 ? "move" : "crosshair";
      return;
    }
    if (d.kind === "pan") {
      state.view.ox = d.ox + (sx - d.sx);
      state.view.oy = d.oy + (sy - d.sy);
      state.view.fitted = false;
    } else if (d.kind === "draw") {
      const p = clampPoint(toImage(sx, sy));
      d.box = normalised({ x0: d.px, y0: d.py, x1: p.x, y1: p.y, score: null });
    } else if (d.kind === "move") {
      const p = toImage(sx, sy);
      const s = d.start;
      const w = s.x1 - s.x0;
      const h = s.y1 - s.y0;
      const x0 = Math.min(Math.max(s.x0 + p.x - d.px, 0), item.width - w);
      const y0 = Math.min(Math.max(s.y0 + p.y - d.py, 0), item.height - h);
      state.boxes[d.index] = { x0: x0, y0: y0, x1: x0 + w, y1: y0 + h, score: null };
      d.moved = true;
    } else if (d.kind === "resize") {
      // By how far the pointer moved: the handle sits outside the edge it drags.
      const p = toImage(sx, sy);
      const dx = p.x - d.px;
      const dy = p.y - d.py;
      const b = Object.assign({}, d.start);
      const cx = (v) => Math.min(Math.max(v, 0), item.width);
      const cy = (v) => Math.min(Math.max(v, 0), item.height);
      if (d.handle.includes("w")) b.x0 = cx(d.start.x0 + dx);
      if (d.handle.includes("e")) b.x1 = cx(d.start.x1 + dx);
      if (d.handle.includes("n")) b.y0 = cy(d.start.y0 + dy);
      if (d.handle.includes("s")) b.y1 = cy(d.start.y1 + dy);
      b.score = null;
      state.boxes[d.index] = b;
    }
    draw();
  }

  function onMouseUp() {
    const d = state.drag;
    state.drag = null;
    canvas.style.cursor = state.spaceDown ? "grab" : "crosshair";
    if (!d) return;
    if (d.kind === "draw") {
      if (d.box && d.box.x1 - d.box.x0 >= MIN_BOX && d.box.y1 - d.box.y0 >= MIN_BOX) {
        snapshot();
        state.boxes.push(d.box);
        state.selected = state.boxes.length - 1;
      }
    } else if (d.kind === "resize") {
      const b = normalised(state.boxes[d.index]);
      if (b.x1 - b.x0 < 1 || b.y1 - b.y0 < 1) {
        state.boxes[d.index] = d.start;   // collapsed to nothing: keep the old box
      } else {
        state.boxes[d.index] = b;
      }
    } else if (d.kind === "move" && !d.moved) {
      state.undo.pop();                   // a click that only selected
    }
    updatePanel();
    draw();
  }

  // -- panel and messages ----------------------------------------------------------------
  function plural(n, word, many) { return n + " " + (n === 1 ? word : (many || word + "s")); }

  function updatePanel() {
    const item = state.item;
    $("key").textContent = item ? item.key : "";
    let origin = "";
    if (item) {
      if (item.origin === "detections") origin = "Boxes from the detector.";
      else if (item.origin === "review") origin = "Boxes from the review by " + item.origin_by + ".";
      else if (item.origin === "import") origin = "Boxes imported (" + item.origin_by + ").";
      else origin = "Not processed by a detector: look for faces yourself.";
      const need = state.session ? state.session.reviews_per_image : 1;
      origin += " " + item.reviewers + " of " + need + " review" + (need === 1 ? "" : "s") + " done" +
        (item.mine ? ", one of them yours." : ".");
    }
    $("origin").textContent = origin;
    $("count").innerHTML = item ? "<b>" + plural(state.boxes.length, "box", "boxes") + "</b>" +
      (state.selected >= 0 ? " · one selected" : "") : "";
    $("prev").disabled = state.pos <= 0 || state.busy || state.locked;
    for (const id of ["next", "noface", "submit"]) $(id).disabled = !item || state.busy || state.locked;
  }

  function showProgress(p) {
    if (!p) return;
    const share = p.total ? p.complete / p.total : 0;
    $("progress-fill").style.width = (100 * share).toFixed(1) + "%";
    $("progress-text").textContent = p.complete.toLocaleString() + " / " + p.total.toLocaleString() +
      " done · you " + p.mine.toLocaleString() +
      (p.disagreement ? " · " + p.disagreement + " disagree" : "");
  }

  // The settings in force, and which ones this start of the server changed.
  function showPolicy(s) {
    const el = $("policy");
    if (!s.settings) return;
    const st = s.settings;
    el.textContent = st.reviews_per_image + " review" + (st.reviews_per_image === 1 ? "" : "s") +
      " per image · " + st.aggregate + " · gold " + Math.round(st.gold_rate * 100) + "% · " +
      st.lives + " lives per " + st.batch_size + " answers";
    const changed = Object.entries(s.changed || {});
    if (changed.length) {
      const note = document.createElement("div");
      note.className = "changed";
      note.textContent = "Changed at this start: " + changed.map(([name, v]) =>
        name.replace(/_/g, " ") + " " + v[0] + " → " + v[1]).join(", ");
      el.appendChild(note);
    }
    el.title = Object.entries(st).map(([k, v]) => k.replace(/_/g, " ") + ": " + v).join("\n");
  }

  // Before the last life: what failing the next gold check would set aside.
  function showStake(warning) {
    const el = $("stake");
    el.hidden = !warning;
    el.textContent = warning || "";
  }

  function showLives(left) {
    const s = state.session;
    const el = $("lives");
    if (!s || !s.gold) { el.hidden = true; return; }
    el.hidden = false;
    el.innerHTML = "";
    for (let i = 0; i < s.lives; i++) {
      const heart = document.createElement("span");
      heart.textContent = "♥";
      if (i >= left) heart.className = "lost";
      el.appendChild(heart);
    }
    el.title = left + " of " + s.lives + " lives left in this batch";
    s.lives_left = left;
  }

  function message(text, kind, actions) {
    const box = $("message");
    if (!text) { box.hidden = true; return; }
    box.hidden = false;
    box.className = "message" + (kind ? " " + kind : "");
    $("message-text").innerHTML = text;
    const row = $("message-actions");
    row.innerHTML = "";
    for (const action of actions || []) {
      const button = document.createElement("button");
      button.textContent = action.label;
      if (action.primary) button.className = "primary";
      button.addEventListener("click", action.run);
      row.appendChild(button);
    }
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function legend(kind) {
    return '<span class="legend ' + kind + '"></span>';
  }

  // -- loading items ---------------------------------------------------------------------
  async function loadImage(key) {
    const res = await fetch("/api/images/" + keyPath(key), { headers: headers(), credentials: "omit" });
    if (!res.ok) throw new Error("image " + key + ": HTTP " + res.status);
    const url = URL.createObjectURL(await res.blob());
    try {
      const img = new Image();
      img.src = url;
      await img.decode();
      return img;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  async function show(item) {
    state.image = await loadImage(item.key);
    state.item = item;
    state.boxes = item.boxes.map((b) => ({ x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1, score: b.score }));
    state.selected = -1;
    state.undo = [];
    state.redo = [];
    state.confirm = null;
    state.overlays = [];
    state.locked = false;
    state.original = JSON.stringify(answerBoxes());
    $("legend-theirs").hidden = true;
    state.shownAt = performance.now();
    $("empty").hidden = true;
    message(null);
    fit();
    updatePanel();
    draw();
    canvas.focus();
  }

  function showEmpty(text) {
    state.item = null;
    state.image = null;
    state.boxes = [];
    state.overlays = [];
    $("empty").hidden = false;
    $("empty").textContent = text;
    updatePanel();
    draw();
  }

  async function guarded(work) {
    if (state.busy) return;
    state.busy = true;
    updatePanel();
    try {
      await work();
    } catch (err) {
      message(escapeHtml(err.message || String(err)), "bad");
    } finally {
      state.busy = false;
      updatePanel();
    }
  }

  function authProblem(res) {
    if (res.status !== 401) return false;
    showEmpty("This review needs your personal link. Ask the curator for it " +
              "(veil review add-annotator NAME) and open it in this browser.");
    message(escapeHtml(detail(res.body, "not signed in")), "bad");
    return true;
  }

  async function fetchNext() {
    const params = new URLSearchParams({ filter: state.filter, order: state.order });
    if (state.cursor) params.set("after", state.cursor);
    const res = await api("/api/next?" + params.toString());
    if (authProblem(res)) return;
    if (!res.ok) throw new Error(detail(res.body, "HTTP " + res.status));
    showProgress(res.body.progress);
    const item = res.body.item;
    if (!item) {
      state.pos = state.history.length;
      showEmpty("Nothing left to review here. Pick another view under “Show”, " +
                "or come back later.");
      return;
    }
    state.cursor = item.cursor;
    state.history = state.history.slice(0, state.pos + 1);
    state.history.push(item.key);
    state.pos = state.history.length - 1;
    await show(item);
  }

  async function fetchItem(key) {
    const res = await api("/api/items/" + keyPath(key));
    if (authProblem(res)) return null;
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(detail(res.body, "HTTP " + res.status));
    return res.body;
  }

  async function nextInner() {
    if (state.pos < state.history.length - 1) {
      for (let i = state.pos + 1; i < state.history.length; i++) {
        const item = await fetchItem(state.history[i]);
        if (item) { state.pos = i; await show(item); return; }
      }
      state.pos = state.history.length - 1;
    }
    await fetchNext();
  }

  async function restartInner() {
    state.history = [];
    state.pos = -1;
    state.cursor = null;
    await fetchNext();
  }

  function goNext() { return guarded(nextInner); }
  function restart() { return guarded(restartInner); }

  function goPrev() {
    return guarded(async () => {
      for (let i = Math.min(state.pos, state.history.length) - 1; i >= 0; i--) {
        const item = await fetchItem(state.history[i]);
        if (item) { state.pos = i; await show(item); return; }
      }
    });
  }

  // -- saving ----------------------------------------------------------------------------
  function answerBoxes() {
    const round = (v) => Math.round(v * 100) / 100;
    return state.boxes
      .map((b) => ({ x0: round(b.x0), y0: round(b.y0), x1: round(b.x1), y1: round(b.y1) }))
      .filter((b) => b.x1 - b.x0 >= 1 && b.y1 - b.y0 >= 1);
  }

  function submit(boxesOverride) {
    return guarded(async () => {
      const item = state.item;
      if (!item || state.locked) return;
      const boxes = boxesOverride || answerBoxes();
      const seconds = Math.min((performance.now() - state.shownAt) / 1000, 3600);
      const res = await api("/api/items/" + keyPath(item.key) + "/review", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ boxes: boxes, base_review_id: item.base_review_id,
                               seconds: Math.round(seconds * 10) / 10 }),
      });
      if (authProblem(res)) return;
      if (res.status === 409) return conflict(res.body, boxes);
      if (!res.ok) {
        message(escapeHtml(detail(res.body, "HTTP " + res.status)), "bad");
        return;
      }
      showProgress(res.body.progress);
      const gold = res.body.gold;
      // Out of lives: no hearts until Continue starts the new batch.
      showLives(gold && gold.restarted ? 0 : res.body.lives_left);
      showStake(gold && gold.restarted ? null : res.body.warning);
      if (gold && !gold.passed) return goldFailed(gold, boxes);
      await nextInner();
      if (res.body.gold && res.body.gold.passed) flash("Gold-standard check passed.");
    });
  }

  let flashTimer = null;
  function flash(text) {
    message(escapeHtml(text), "good");
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { if (!state.locked) message(null); }, 2500);
  }

  function goldFailed(gold, answer) {
    state.locked = true;
    updatePanel();
    state.selected = -1;
    state.boxes = [];
    state.overlays = [
      { boxes: answer, color: COLORS.answer, dash: [6, 4] },
      { boxes: gold.truth, color: COLORS.truth, dash: null },
    ];
    draw();
    const text = escapeHtml(gold.message) + "<br>" + legend("truth") + "correct &nbsp;" +
      legend("answer") + "yours";
    const go = () => {
      state.locked = false;
      state.continueAction = null;
      updatePanel();
      message(null);
      if (gold.restarted) { showLives(gold.lives); return restart(); }
      return goNext();
    };
    state.continueAction = go;
    message(text, "bad", [{ label: "Continue (Enter)", primary: true, run: go }]);
  }

  // Which boxes of ``a`` have no box in ``b`` of the same face (IoU >= SAME_FACE_IOU).
  function unmatched(a, b) {
    const iou = (p, q) => {
      const w = Math.min(p.x1, q.x1) - Math.max(p.x0, q.x0);
      const h = Math.min(p.y1, q.y1) - Math.max(p.y0, q.y0);
      if (w <= 0 || h <= 0) return 0;
      const inter = w * h;
      return inter / ((p.x1 - p.x0) * (p.y1 - p.y0) + (q.x1 - q.x0) * (q.y1 - q.y0) - inter);
    };
    return a.filter((p) => !b.some((q) => iou(p, q) >= SAME_FACE_IOU));
  }

  function conflict(body, mine) {
    const latest = body.latest;
    const theirsOnly = unmatched(latest.boxes, mine);
    const mineOnly = unmatched(mine, latest.boxes);
    const who = latest.annotator || "the other answer";
    state.overlays = [{
      boxes: latest.boxes.map((b) => Object.assign({}, b, { differs: theirsOnly.includes(b) })),
      color: COLORS.theirs, dash: [3, 3], label: who,
    }];
    $("legend-theirs").hidden = false;
    draw();
    const differs = theirsOnly.length || mineOnly.length
      ? "What differs: " + plural(theirsOnly.length, "box", "boxes") + " only in theirs (drawn " +
        "thick), " + plural(mineOnly.length, "box", "boxes") + " only in yours."
      : "Same faces in both (boxes differ by less than IoU " + SAME_FACE_IOU + ").";
    const text = escapeHtml(body.detail) + "<br>" + legend("theirs") +
      escapeHtml(who) + "’s boxes (" + latest.boxes.length + ") · yours (" + mine.length +
      ") are kept as they are.<br>" + escapeHtml(differs);
    const done = () => { state.overlays = []; $("legend-theirs").hidden = true; message(null); };
    message(text, "warn", [
      { label: "Use theirs", run: () => {
          snapshot();
          state.boxes = latest.boxes.map((b) => ({ x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1, score: null }));
          state.item.base_review_id = latest.review_id;
          done();
          updatePanel();
          draw();
        } },
      { label: "Save mine anyway", primary: true, run: () => {
          state.item.base_review_id = latest.review_id;
          done();
          submit(mine);
        } },
    ]);
    state.conflictShown = { theirsOnly: theirsOnly.length, mineOnly: mineOnly.length };
  }

  // -- keyboard --------------------------------------------------------------------------
  function onKeyDown(ev) {
    if (ev.target instanceof HTMLSelectElement || ev.target instanceof HTMLInputElement) return;
    const key = ev.key;
    if (key === " ") {
      state.spaceDown = true;
      canvas.style.cursor = "grab";
      ev.preventDefault();
      return;
    }
    if (state.locked) {
      if (key === "Enter" && state.continueAction) { ev.preventDefault(); state.continueAction(); }
      return;
    }
    const mod = ev.ctrlKey || ev.metaKey;
    if (mod && (key.toLowerCase() === "y" || (ev.shiftKey && key.toLowerCase() === "z"))) {
      ev.preventDefault(); redo(); return;
    }
    if (mod && key.toLowerCase() === "z") { ev.preventDefault(); undo(); return; }
    if (mod || ev.altKey) return;
    const upper = key.length === 1 ? key.toUpperCase() : key;
    if (state.confirm) {
      ev.preventDefault();
      if (key === "Escape") cancelConfirm();
      else if (upper === state.confirm.key ||
               (state.confirm.key === "D" && key === "ArrowRight") ||
               (state.confirm.key === "A" && key === "ArrowLeft")) {
        const run = state.confirm.run;
        cancelConfirm();
        run();
      }
      return;
    }
    if (key === "Escape") {
      // Cancel what is in progress, else deselect; never delete (as CVAT, Label Studio).
      ev.preventDefault();
      const d = state.drag;
      if (d && (d.kind === "move" || d.kind === "resize")) {
        state.boxes[d.index] = d.start;
        state.undo.pop();
        state.drag = null;
      } else if (d && d.kind === "draw") {
        state.drag = null;
      } else if (state.selected >= 0) {
        state.selected = -1;
      } else if (state.drawMode) {
        setDrawMode(false);
      }
      updatePanel();
      draw();
    } else if (key === "Delete" || key === "Backspace") {
      if (state.drag && state.drag.kind === "draw") { state.drag = null; draw(); }
      else deleteSelected();
      ev.preventDefault();
    } else if (key === "Enter") {
      ev.preventDefault();
      submit();
    } else if (upper === "N") {
      ev.preventDefault();
      noFaces();
    } else if (upper === "R") {
      ev.preventDefault();
      setDrawMode(!state.drawMode);
    } else if (key === "ArrowRight" || upper === "D") {
      ev.preventDefault();
      leaving("D", goNext);
    } else if (key === "ArrowLeft" || upper === "A") {
      ev.preventDefault();
      leaving("A", goPrev);
    } else if (key === "f" || key === "F" || key === "0") {
      fit();
      draw();
    } else if (key === "Tab" && state.boxes.length) {
      ev.preventDefault();
      state.selected = (state.selected + (ev.shiftKey ? state.boxes.length - 1 : 1)) % state.boxes.length;
      updatePanel();
      draw();
    }
  }

  function onKeyUp(ev) {
    if (ev.key === " ") {
      state.spaceDown = false;
      canvas.style.cursor = "crosshair";
    }
  }

  // -- start -----------------------------------------------------------------------------
  async function start() {
    const res = await api("/api/session");
    if (authProblem(res)) return;
    if (!res.ok) { showEmpty(detail(res.body, "The review server answered HTTP " + res.status)); return; }
    const s = res.body;
    s.uncertain_below = s.uncertain_below === undefined ? 0.5 : s.uncertain_below;
    state.session = s;
    $("who").textContent = s.annotator;
    const select = $("filter");
    for (const [name, help] of Object.entries(s.filters)) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = { todo: "to do", detections: "has detections", unreviewed: "never reviewed",
                             disagreement: "disagreement", all: "all images" }[name] || name;
      option.title = help;
      select.appendChild(option);
    }
    select.value = state.filter;
    showPolicy(s);
    showLives(s.lives_left);
    showStake(s.warning);
    await restart();
  }

  canvas.addEventListener("mousedown", onMouseDown);
  window.addEventListener("mousemove", (ev) => {
    if (ev.target === canvas || state.drag) onMouseMove(ev);
  });
  window.addEventListener("mouseup", onMouseUp);
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const p = pointer(ev);
    zoomAt(p.x, p.y, Math.pow(1.0015, -ev.deltaY));
  }, { passive: false });
  window.addEventListener("keydown", onKeyDown);
  window.addEventListener("keyup", onKeyUp);
  window.addEventListener("resize", resizeCanvas);
  $("prev").addEventListener("click", () => leaving("A", goPrev));
  $("next").addEventListener("click", () => leaving("D", goNext));
  $("noface").addEventListener("click", noFaces);
  $("mode").addEventListener("click", () => setDrawMode(false));
  $("minimap").addEventListener("mousedown", onMinimapDown);
  // Reloading or closing the tab with unsaved edits asks the browser's own question.
  window.addEventListener("beforeunload", (ev) => {
    if (dirty()) { ev.preventDefault(); ev.returnValue = ""; }
  });
  $("submit").addEventListener("click", () => submit());
  $("filter").addEventListener("change", (ev) => { state.filter = ev.target.value; restart(); canvas.focus(); });
  $("order").addEventListener("change", (ev) => { state.order = ev.target.value; restart(); canvas.focus(); });

  // A read-only window for tests and curious people: where boxes are on the screen.
  window.veilReview = {
    item: () => state.item,
    boxes: () => state.boxes.map((b) => Object.assign({}, b)),
    selected: () => state.selected,
    toScreen: (x, y) => { const p = toScreen(x, y); const r = canvas.getBoundingClientRect(); return { x: p.x + r.left, y: p.y + r.top }; },
    busy: () => state.busy,
    locked: () => state.locked,
    handle: (name) => {
      if (state.selected < 0) return null;
      const h = handles(state.boxes[state.selected]).find((x) => x.name === name);
      const r = canvas.getBoundingClientRect();
      return { x: h.x + r.left, y: h.y + r.top };
    },
    dirty: () => dirty(),
    drawMode: () => state.drawMode,
    confirming: () => !!state.confirm,
    conflict: () => state.conflictShown || null,
    view: () => Object.assign({}, state.view),
  };

  resizeCanvas();
  start().catch((err) => showEmpty("Cannot reach the review server: " + err.message));
})();
