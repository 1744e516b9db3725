// radlens page: plain JavaScript, no libraries, nothing loaded from elsewhere.
// Text never goes through innerHTML: reports and queries are inserted as text nodes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const METHOD_NAMES = {
    gradcam_pp: "Grad-CAM++",
    gradcam: "Grad-CAM",
    integrated_gradients: "Integrated gradients",
    smoothgrad: "SmoothGrad",
    gradient: "Gradient",
  };
  const state = {
    options: null,
    mode: null, // "text" or "image": what the current results answer
    query: "",
    hits: [],
    current: -1,
    study: null,
    explained: new Map(),
    explainSeq: 0,
    searchSeq: 0,
    pendingText: null, // the text search in flight (its request body), so a repeat is not sent again
    running: null, // "text" or "image": the search in flight, whose results are about to replace these
    previewUrl: null,
  };

  // --- talking to the API -------------------------------------------------------------------------

  class ApiError extends Error {}

  const UNREADABLE = "The server sent an answer radlens cannot read. Please try again.";

  // A successful answer's JSON; something else (e.g. an HTML page from a proxy) is a plain error.
  function parseAnswer(body) {
    try {
      return JSON.parse(body);
    } catch (_) {
      throw new ApiError(UNREADABLE);
    }
  }

  async function readError(status, body, retryAfter) {
    let detail = "";
    let hint = "";
    try {
      const data = JSON.parse(body);
      detail = typeof data.detail === "string" ? data.detail : "";
      hint = typeof data.hint === "string" ? data.hint : "";
    } catch (_) { /* not JSON: fall through to the status text */ }
    if (status === 503) {
      const wait = retryAfter === "1" ? "1 second" : `${retryAfter || "a few"} seconds`;
      return `The server is busy right now. Please try again in ${wait}.`;
    }
    if (status === 413) return `${capital(detail || "the file is too large")}. Choose a smaller image.`;
    if (status === 404) return `${capital(detail || "not found")}.`;
    if (status === 422) return `${capital(detail || "the request was not accepted")}${hint ? ` — ${hint}` : ""}.`;
    return `Something went wrong on the server (error ${status}). Please try again.`;
  }

  function capital(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  async function api(path, init) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError("Could not reach the radlens server. Is it still running?");
    }
    const body = await response.text();
    if (!response.ok) {
      throw new ApiError(await readError(response.status, body, response.headers.get("Retry-After")));
    }
    return parseAnswer(body);
  }

  function postJson(path, payload) {
    return api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  // Uploads use XMLHttpRequest: fetch cannot report upload progress.
  function upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(Math.round((100 * event.loaded) / event.total));
      };
      xhr.upload.onload = () => onProgress(100);
      xhr.onerror = () => reject(new ApiError("Could not reach the radlens server. Is it still running?"));
      xhr.onload = async () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve(parseAnswer(xhr.responseText));
          } catch (error) {
            reject(error); // a throw here would leave the promise, and the spinner, hanging
          }
        } else {
          reject(new ApiError(await readError(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After"))));
        }
      };
      xhr.send(form);
    });
  }

  // --- status, errors -----------------------------------------------------------------------------

  function setStatus(text, busy) {
    $("status-text").textContent = text;
    $("spinner").hidden = !busy;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function option(value, label) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = label ?? value;
    return element;
  }

  // --- start-up -----------------------------------------------------------------------------------

  async function init() {
    bindEvents();
    try {
      const options = await api("/api/options");
      state.options = options;
      for (const label of options.labels) $("f-label").append(option(label));
      for (const view of options.views) $("f-view").append(option(view));
      for (const split of options.splits) $("f-split").append(option(split));
      for (const method of options.methods) $("x-method").append(option(method, METHOD_NAMES[method] || method));
      $("char-max").textContent = options.max_query_chars;
      $("query").maxLength = options.max_query_chars;
      $("upload-limit").textContent = `(up to ${options.max_upload_mb} MB)`;
      setStatus(`Ready — ${options.studies} studies in the index. Type a report or drop an X-ray.`, false);
    } catch (error) {
      setStatus("", false);
      showError(error.message);
    }
  }

  function bindEvents() {
    $("text-form").addEventListener("submit", (event) => {
      event.preventDefault();
      searchText();
    });
    $("query").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        searchText();
      }
    });
    $("query").addEventListener("input", () => {
      $("char-count").textContent = $("query").value.length;
    });
    for (const id of ["f-label", "f-view", "f-split", "f-k"]) {
      $(id).addEventListener("change", rerun);
    }
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) searchImage(file);
    });
    drop.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        $("file").click();
      }
    });
    $("file").addEventListener("change", () => {
      const file = $("file").files[0];
      if (file) searchImage(file);
      $("file").value = "";
    });
    $("results").addEventListener("keydown", moveFocus);
    $("detail-close").addEventListener("click", () => $("detail").close());
    $("detail").addEventListener("close", () => {
      state.explainSeq += 1; // drop answers still on their way
      const card = $("results").querySelector(`[data-index="${state.current}"]`);
      if (card) card.focus();
    });
    $("x-method").addEventListener("change", explainCurrent);
    $("x-source").addEventListener("change", explainCurrent);
    $("x-opacity").addEventListener("input", () => {
      $("overlay").style.opacity = String($("x-opacity").value / 100);
    });
    $("detail-image").addEventListener("error", () => {
      showDetailError("The image could not be loaded from the server.");
    });
  }

  function filters() {
    const pick = (id) => ($(id).value ? [$(id).value] : []);
    return { labels: pick("f-label"), views: pick("f-view"), splits: pick("f-split") };
  }

  // A filter changed: run the search again — the one in flight if any (its answer would no longer
  // match the filters shown), else the one whose results are shown.
  function rerun() {
    const kind = state.running || state.mode;
    if (kind === "text" && (state.running || state.query)) searchText();
    else if (kind === "image" && state.lastFile) searchImage(state.lastFile);
  }

  // --- searching ----------------------------------------------------------------------------------

  async function searchText() {
    const text = $("query").value;
    if (!text.trim()) {
      showError("Type a few words or a report first, e.g. “large right pleural effusion”.");
      $("query").focus();
      return;
    }
    const payload = { text, k: Number($("f-k").value), filters: filters() };
    const key = JSON.stringify(payload);
    if (key === state.pendingText) return; // Ctrl+Enter again while the same search runs: send it once
    const seq = ++state.searchSeq;
    state.pendingText = key;
    state.running = "text";
    showError("");
    setStatus("Searching X-rays…", true);
    $("search-button").disabled = true;
    try {
      const data = await postJson("/api/search", payload);
      if (seq !== state.searchSeq) return;
      state.mode = "text";
      state.query = text;
      state.explained.clear();
      $("query-image-box").hidden = true;
      showResults(data, "X-rays matching your text");
    } catch (error) {
      if (seq === state.searchSeq) {
        setStatus("", false);
        showError(error.message);
      }
    } finally {
      if (seq === state.searchSeq) { // an older answer must not unlock the button of a newer search
        state.pendingText = null;
        state.running = null;
        $("search-button").disabled = false;
      }
    }
  }

  async function searchImage(file) {
    const limit = state.options ? state.options.max_upload_mb : 20;
    if (file.size > limit * 1024 * 1024) {
      showError(`That file is ${(file.size / 1024 / 1024).toFixed(1)} MB; the limit is ${limit} MB. Choose a smaller image.`);
      return;
    }
    const seq = ++state.searchSeq;
    state.pendingText = null; // this upload replaces any text search in flight
    state.running = "image";
    $("search-button").disabled = false;
    state.lastFile = file;
    showError("");
    setStatus("Uploading the image… 0%", true);
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("k", $("f-k").value);
    const chosen = filters();
    for (const [field, values] of Object.entries(chosen)) for (const value of values) form.append(field, value);
    try {
      const data = await upload("/api/search/image", form, (percent) => {
        if (seq !== state.searchSeq) return;
        setStatus(percent < 100 ? `Uploading the image… ${percent}%` : "Reading the image and finding matching reports…", true);
      });
      if (seq !== state.searchSeq) return;
      state.mode = "image";
      state.query = "";
      state.explained.clear();
      showPreview(file);
      showResults(data, "Reports matching your image");
    } catch (error) {
      if (seq === state.searchSeq) {
        setStatus("", false);
        showError(error.message);
      }
    } finally {
      if (seq === state.searchSeq) state.running = null;
    }
  }

  function showPreview(file) {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    const image = $("query-image");
    image.onerror = () => { $("query-image-box").hidden = true; }; // e.g. DICOM: browsers cannot show it
    image.src = state.previewUrl;
    $("query-image-box").hidden = false;
  }

  function chips(container, positive, uncertain) {
    container.textContent = "";
    for (const name of positive) container.append(chip(name, "pos", `${name}: positive`));
    for (const name of uncertain) container.append(chip(`${name}?`, "unc", `${name}: uncertain`));
    if (!positive.length && !uncertain.length) container.append(chip("no positive label", "none", ""));
  }

  function chip(text, kind, title) {
    const element = document.createElement("span");
    element.className = `chip ${kind}`;
    element.textContent = text;
    if (title) element.title = title;
    return element;
  }

  function showResults(data, title) {
    state.hits = data.results;
    const list = $("results");
    list.textContent = "";
    $("results-title").hidden = false;
    $("results-title").textContent = data.results.length ? title : "No results";
    $("results-help").hidden = !data.results.length;
    data.results.forEach((hit, index) => {
      const item = document.createElement("li");
      const card = document.createElement("button");
      card.type = "button";
      card.className = "card";
      card.dataset.index = String(index);
      const what = hit.positive.length ? hit.positive.join(", ") : "no positive label";
      card.setAttribute("aria-label", `Result ${hit.rank}: study ${hit.study_id}, score ${hit.score.toFixed(2)}, ${what}`);
      if (hit.thumbnail_url) {
        const image = document.createElement("img");
        image.src = hit.thumbnail_url;
        image.alt = "";
        image.loading = "lazy";
        card.append(image);
      }
      const meta = document.createElement("div");
      meta.className = "meta";
      const rank = document.createElement("span");
      rank.textContent = `#${hit.rank} · ${hit.view || "view ?"}`;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      score.title = "cosine similarity with your query";
      meta.append(rank, score);
      const labels = document.createElement("div");
      labels.className = "labels";
      chips(labels, hit.positive, hit.uncertain);
      const impression = document.createElement("p");
      impression.className = "impression";
      impression.textContent = hit.impression || "(no impression)";
      card.append(meta, labels, impression);
      card.addEventListener("click", () => openDetail(index));
      item.append(card);
      list.append(item);
    });
    const notices = data.notices.length ? ` Note: ${data.notices.join("; ")}.` : "";
    if (data.results.length) {
      setStatus(`${data.results.length} results in ${Math.round(data.took_ms)} ms.${notices}`, false);
    } else {
      setStatus(`No study matches these filters. Try removing a filter.${notices}`, false);
    }
  }

  // Arrow keys walk the grid (up/down jump a row), Home/End go to the ends; Enter opens (a button).
  function moveFocus(event) {
    const cards = [...$("results").querySelectorAll(".card")];
    const index = cards.indexOf(document.activeElement);
    if (index < 0) return;
    const columns = getComputedStyle($("results")).gridTemplateColumns.split(" ").length || 1;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns };
    let next = index;
    if (event.key in moves) next = index + moves[event.key];
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = cards.length - 1;
    else return;
    event.preventDefault();
    cards[Math.max(0, Math.min(cards.length - 1, next))].focus();
  }

  // --- detail view and explanations ---------------------------------------------------------------

  function showDetailError(text) {
    const box = $("x-error");
    box.textContent = text;
    box.hidden = !text;
  }

  async function openDetail(index) {
    const hit = state.hits[index];
    state.current = index;
    state.study = null;
    $("detail-title").textContent = `Study ${hit.study_id}${hit.view ? ` · ${hit.view}` : ""}${hit.split ? ` · ${hit.split}` : ""}`;
    $("detail-score").textContent = `score ${hit.score.toFixed(3)}`;
    $("overlay").removeAttribute("src");
    $("detail-image").src = hit.image_url || "";
    for (const id of ["findings", "impression", "query-words"]) $(id).textContent = "";
    $("detail-labels").textContent = "";
    $("legend").textContent = "";
    showDetailError("");
    const textQuery = state.mode === "text";
    $("x-source").querySelector('option[value="query"]').disabled = !textQuery;
    $("x-source").value = textQuery ? "query" : "report";
    $("query-block").hidden = !textQuery;
    if (textQuery) $("query-words").textContent = state.query;
    if (!$("detail").open) $("detail").showModal();
    try {
      const study = await api(hit.study_url); // /api/studies/{row}: ids need not be unique, rows are
      if (state.current !== index) return;
      state.study = study;
      chips($("detail-labels"), study.positive, study.uncertain);
      $("findings").textContent = study.findings || "(none)";
      $("impression").textContent = study.impression || "(none)";
    } catch (error) {
      showDetailError(error.message);
    }
    explainCurrent();
  }

  async function explainCurrent() {
    const hit = state.hits[state.current];
    if (!hit || !hit.image_url || !$("detail").open) return;
    const method = $("x-method").value || "gradcam_pp";
    const source = $("x-source").value;
    const key = `${hit.row}|${source}|${method}`;
    const seq = ++state.explainSeq;
    showDetailError("");
    let result = state.explained.get(key);
    if (!result) {
      $("x-spinner").hidden = false;
      $("overlay").style.opacity = String((0.2 * $("x-opacity").value) / 100); // the old map fades while the new one is computed
      $("x-status-text").textContent = `Computing the explanation (${METHOD_NAMES[method] || method})…`;
      const payload = { row: hit.row, method };
      if (source === "query") payload.text = state.query;
      try {
        result = await postJson("/api/explain", payload);
        state.explained.set(key, result);
      } catch (error) {
        if (seq === state.explainSeq) {
          $("x-spinner").hidden = true;
          $("x-status-text").textContent = "";
          showDetailError(error.message);
        }
        return;
      }
    }
    if (seq !== state.explainSeq) return; // the user moved on
    $("x-spinner").hidden = true;
    $("x-status-text").textContent = `${METHOD_NAMES[method] || method}: similarity ${result.score.toFixed(3)} (${Math.round(result.took_ms)} ms)`;
    const overlay = $("overlay");
    overlay.src = result.heatmap_png;
    overlay.style.opacity = String($("x-opacity").value / 100);
    $("legend").textContent = result.signed
      ? "Image: red raises the similarity, blue lowers it."
      : "Image: brighter, more opaque colour marks the regions that drive the match.";
    showWords(result, source);
  }

  // The API's word offsets count code points (Python's str indices); JavaScript strings are indexed in
  // UTF-16 units, where an emoji or other astral character takes two. Convert once, here.
  function utf16Words(text, words) {
    const units = [0]; // units[i]: where code point i starts, in UTF-16 units
    for (const character of text) units.push(units[units.length - 1] + character.length);
    const at = (offset) => units[Math.max(0, Math.min(offset, units.length - 1))];
    return words.map((word) => ({ ...word, start: at(word.start), end: at(word.end) }));
  }

  function showWords(result, source) {
    const words = utf16Words(result.text, result.words);
    const peak = Math.max(1e-12, ...words.map((word) => Math.abs(word.score)));
    const note = result.truncated ? " (only the beginning was read by the model)" : "";
    if (source === "query") {
      highlight($("query-words"), result.text, words, peak, 0, result.text.length);
      if (note) $("query-words").append(document.createTextNode(note));
      if (state.study) {
        $("findings").textContent = state.study.findings || "(none)";
        $("impression").textContent = state.study.impression || "(none)";
      }
      return;
    }
    if (state.mode === "text") $("query-words").textContent = state.query;
    const study = state.study;
    const findings = study && study.findings ? result.text.indexOf(study.findings) : -1;
    const impression = study && study.impression ? result.text.indexOf(study.impression, Math.max(0, findings)) : -1;
    if (findings >= 0 && impression >= 0) {
      highlight($("findings"), result.text, words, peak, findings, study.findings.length);
      highlight($("impression"), result.text, words, peak, impression, study.impression.length);
    } else {
      highlight($("findings"), result.text, words, peak, 0, result.text.length);
      $("impression").textContent = "";
    }
    if (note) $("impression").append(document.createTextNode(note));
  }

  // Shade words of text[start, start + length) by their scores (green raises, red lowers the match).
  function highlight(element, text, words, peak, start, length) {
    element.textContent = "";
    const end = start + length;
    let at = start;
    for (const word of words) {
      if (word.end <= start || word.start >= end) continue;
      const from = Math.max(word.start, start);
      const to = Math.min(word.end, end);
      if (from > at) element.append(document.createTextNode(text.slice(at, from)));
      const mark = document.createElement("mark");
      const strength = (0.85 * Math.abs(word.score)) / peak;
      mark.style.backgroundColor = word.score >= 0
        ? `rgba(0, 150, 60, ${strength.toFixed(3)})`
        : `rgba(210, 30, 30, ${strength.toFixed(3)})`;
      mark.title = `relevance ${word.score >= 0 ? "+" : ""}${word.score.toPrecision(3)}`;
      mark.textContent = text.slice(from, to);
      element.append(mark);
      at = to;
    }
    if (at < end) element.append(document.createTextNode(text.slice(at, end)));
  }

  init();
})();
