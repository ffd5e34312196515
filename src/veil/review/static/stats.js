// veil review: the team's stats page (same token rules as the review page).
"use strict";

(function () {
  const token = sessionStorage.getItem("veil-review-token");
  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => (v === null || v === undefined) ? "–" :
    Number(v).toLocaleString(undefined, { maximumFractionDigits: digits || 0 });
  const pct = (v) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(0) + "%";

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function render(s) {
    const cards = [
      ["images", s.images], ["complete", s.complete], ["remaining", s.remaining],
      ["reviewed at least once", s.reviewed], ["gold images", s.gold_images],
    ];
    for (const [label, value] of cards) {
      const card = document.createElement("div");
      card.className = "card";
      card.innerHTML = '<div class="n"></div><div class="l"></div>';
      card.querySelector(".n").textContent = fmt(value);
      card.querySelector(".l").textContent = label;
      $("cards").appendChild(card);
    }
    const body = $("annotators").querySelector("tbody");
    for (const a of s.annotators) {
      const row = document.createElement("tr");
      [a.annotator, fmt(a.reviews), fmt(a.images), fmt(a.rejected), fmt(a.images_per_hour),
       fmt(a.seconds_per_image, 1), a.gold_passed + " / " + a.gold_answered, pct(a.gold_accuracy),
       fmt(a.failed_batches)].forEach((t) => cell(row, t));
      body.appendChild(row);
    }
    const failed = s.set_aside || [];
    const waiting = failed.filter((b) => !b.reinstated_at);
    $("set-aside-note").textContent = failed.length === 0 ? "No batch has failed its gold checks."
      : waiting.length + " failed batch(es) with " +
        waiting.reduce((n, b) => n + b.answers, 0) + " answer(s) set aside; after inspecting " +
        "them, `veil review reinstate --batch N --store ...` puts a batch's answers back.";
    const aside = $("set-aside").querySelector("tbody");
    for (const b of failed) {
      const row = document.createElement("tr");
      [String(b.batch), b.annotator, b.ended_at || "–", fmt(b.answers), fmt(b.images),
       b.reinstated_at ? "reinstated " + b.reinstated_at : "set aside"].forEach((t) => cell(row, t));
      aside.appendChild(row);
    }
    const ag = s.agreement;
    $("agreement").textContent = ag.mean_iou === null
      ? "No image has two reviewers yet."
      : "Mean pairwise pixel IoU " + ag.mean_iou.toFixed(3) + " over " + ag.pairs + " pairs on " +
        ag.images + " images; " + pct(ag.share_agreeing) + " of pairs at or above " + ag.threshold + ".";
    const pairs = $("pairs").querySelector("tbody");
    for (const p of ag.by_pair) {
      const row = document.createElement("tr");
      [p.annotators.join(" & "), fmt(p.images), p.mean_iou.toFixed(3)].forEach((t) => cell(row, t));
      pairs.appendChild(row);
    }
    const st = s.settings;
    $("policy").textContent = st.reviews_per_image + " review(s) per image, aggregated by " +
      st.aggregate + "; gold at rate " + st.gold_rate + " (" + pct(st.gold_wrong) +
      " shown wrong), pass mark IoU " + st.gold_iou + ", " + st.lives + " lives per batch of " +
      st.batch_size + "; images leased for " + st.lease_minutes + " min.";
    const last = s.last_change;
    if (last) {
      const changed = Object.entries(last.changed || {});
      $("last-change").textContent = "The last server start (" + last.at + ") changed " +
        (changed.length ? changed.map(([k, v]) => k.replace(/_/g, " ") + " " + v[0] + " → " + v[1])
          .join(", ") : "nothing") + ".";
    }
  }

  fetch("/api/stats", { credentials: "omit", headers: token ? { Authorization: "Bearer " + token } : {} })
    .then(async (res) => {
      const body = await res.json();
      if (!res.ok) throw new Error(body.detail || "HTTP " + res.status);
      render(body);
    })
    .catch((err) => { $("error").hidden = false; $("error").textContent = err.message; });
})();
