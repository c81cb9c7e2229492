// The web page's only script: no build step, no dependencies, no inline code (it runs under
// "default-src 'self'"). It calls the service's own API with the key the user typed, kept in
// this tab's sessionStorage only.
"use strict";

(() => {
  const KEY_STORAGE = "dfd-api-key";
  const CHART = { width: 640, height: 220, left: 44, right: 12, top: 12, bottom: 34 };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PLAIN_WORDS = {
    400: "The request could not be used.",
    401: "The API key was not accepted. Check the key and try again.",
    403: "This API key is not allowed to do this.",
    404: "The service does not offer this.",
    408: "The upload took too long. Try again on a faster connection.",
    413: "The file is too large for this service.",
    415: "This kind of file is not accepted.",
    422: "The file could not be used.",
    429: "Too many requests with this key just now.",
    503: "The service is busy or not ready yet.",
    504: "The service took too long to answer.",
  };

  const METHOD_UNAVAILABLE = "This service cannot make that kind of explanation.";

  const $ = (id) => document.getElementById(id);
  const form = $("ask");
  const keyInput = $("api-key");
  const methodInput = $("method");
  const fileInput = $("file");
  const dropZone = $("drop-zone");
  let chosenFile = null;
  let sourceUrl = null;

  // ------------------------------------------------------------------ methods
  // Offer only the explanation methods this service runs (GET /explain/methods, no key
  // needed): without torch, LIME and SHAP only. Until it answers, or if it cannot, the page
  // keeps its own list and the service says what it refuses.
  async function loadMethods() {
    let body = null;
    try {
      const response = await fetch("/explain/methods", { headers: { Accept: "application/json" } });
      if (response.ok) body = await readJson(response);
    } catch (error) {
      return;
    }
    if (!body || !Array.isArray(body.methods)) return;
    const runs = new Set(body.methods.filter((m) => m.available).map((m) => m.name));
    if (!runs.size) return;
    const chosen = methodInput.value;
    const missing = [];
    for (const option of Array.from(methodInput.options)) {
      if (!runs.has(option.value)) {
        missing.push(option.textContent.replace(/\s*\(.*\)$/, ""));
        option.remove();
      }
    }
    if (!runs.has(chosen) && runs.has(body.default)) methodInput.value = body.default;
    const note = $("method-note");
    note.textContent = missing.length
      ? `${missing.join(" and ")} need PyTorch, which this service (${body.backend}) does not ` +
        "have: it offers the methods above."
      : "";
    note.hidden = !missing.length;
    methodInput.dataset.loaded = "1";
  }

  loadMethods();

  // ------------------------------------------------------------------ key and file
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, keyInput.value));

  function choose(file) {
    chosenFile = file || null;
    $("file-name").textContent = chosenFile
      ? `Chosen: ${chosenFile.name} (${formatBytes(chosenFile.size)})`
      : "";
  }

  fileInput.addEventListener("change", () => choose(fileInput.files[0]));
  fileInput.addEventListener("focus", () => dropZone.classList.add("focus-within"));
  fileInput.addEventListener("blur", () => dropZone.classList.remove("focus-within"));
  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      choose(event.dataTransfer.files[0]);
    }
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run().catch((error) => showError(`Something went wrong in this page: ${error.message}`));
  });

  // ------------------------------------------------------------------ the flow
  async function run() {
    const key = keyInput.value.trim();
    if (!key) {
      showError("Enter your API key first.");
      keyInput.focus();
      return;
    }
    if (!chosenFile) {
      showError("Choose an image or a video first.");
      fileInput.focus();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    const file = chosenFile;
    const isVideo = isVideoFile(file);
    resetResult();
    setBusy(true, isVideo ? "Scoring the video's frames…" : "Scoring and explaining…");
    try {
      if (isVideo) {
        await checkVideo(file, key);
      } else {
        await checkImage(file, key);
      }
    } finally {
      setBusy(false);
    }
  }

  async function checkImage(file, key) {
    const body = await explain(file, file.name, key);
    if (!body) return;
    showVerdict(body, `${body.model_version} · ${Math.round(body.timings.total_ms)} ms`);
    await drawSource(file, body.explanation.face_box);
    showOverlay(body.explanation, "Where the evidence is: red means more");
  }

  async function checkVideo(file, key) {
    const body = await call("/infer/video", file, file.name, key);
    if (!body) return;
    const scored = body.frames.filter((frame) => frame.fake_prob !== null);
    showVerdict(
      body,
      `${body.aggregate} of ${body.video.frames_scored} of ${body.video.frames_sampled} frames` +
        ` · ${body.video.width}x${body.video.height} ${body.video.codec}` +
        ` · ${Math.round(body.timings.total_ms)} ms`,
    );
    drawChart(body);
    if (!scored.length) return;
    const top = scored.reduce((a, b) => (b.fake_prob > a.fake_prob ? b : a));
    setBusy(true, `Explaining the most suspicious frame (${top.time_s.toFixed(2)} s)…`);
    const frame = await grabFrame(file, top.time_s);
    if (!frame) {
      showStatus("This browser could not decode the video to show its most suspicious frame.", true);
      return;
    }
    const explained = await explain(frame, `frame-${top.index}.png`, key);
    if (!explained) return;
    await drawSource(frame, top.face ? top.face.box : explained.explanation.face_box);
    $("source-caption").textContent =
      `Frame ${top.index} at ${top.time_s.toFixed(2)} s: the most suspicious one ` +
      `(fake probability ${percent(top.fake_prob)})`;
    showOverlay(explained.explanation, `Where the evidence is in frame ${top.index}`);
  }

  function explain(blob, name, key) {
    const method = encodeURIComponent(methodInput.value);
    return call(`/explain?method=${method}`, blob, name, key);
  }

  // ------------------------------------------------------------------ the API
  async function call(path, blob, name, key) {
    const data = new FormData();
    data.append("file", blob, name);
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        body: data,
        headers: { "X-API-Key": key, Accept: "application/json" },
      });
    } catch (error) {
      showError("Could not reach the service. Is it running, and is this the right address?");
      return null;
    }
    const body = await readJson(response);
    if (response.ok && body) return body;
    showError(plainError(response, body));
    return null;
  }

  async function readJson(response) {
    const type = response.headers.get("content-type") || "";
    if (!type.includes("application/json")) return null;
    try {
      return await response.json();
    } catch (error) {
      return null;
    }
  }

  function plainError(response, body) {
    const status = response.status;
    const code = body && body.error ? body.error.code : "";
    const lead = (code === "method_unavailable" && METHOD_UNAVAILABLE) || PLAIN_WORDS[status] ||
      (status >= 500
        ? `The service failed on this request (error ${status}). Try again later.`
        : `The service refused the request (error ${status}).`);
    const detail = body && body.error && typeof body.error.message === "string"
      ? sentence(body.error.message)
      : "";
    const wait = response.headers.get("retry-after");
    const retry = wait && /^\d+$/.test(wait) ? ` Try again in ${wait} s.` : "";
    return [lead, detail].filter(Boolean).join(" ") + retry;
  }

  // ------------------------------------------------------------------ drawing
  function showVerdict(body, details) {
    const fake = body.label === "fake";
    const verdict = $("verdict");
    verdict.textContent = fake ? "Likely fake" : "Likely real";
    verdict.className = fake ? "fake" : "real";
    const share = Math.round(body.fake_prob * 1000) / 10;
    $("prob-fill").style.width = `${share}%`;
    $("prob-threshold").style.left = `${body.threshold * 100}%`;
    const bar = $("prob-bar");
    bar.setAttribute("aria-valuenow", String(share));
    bar.setAttribute("aria-valuetext", `${share}% likely fake`);
    $("prob-text").textContent = `${share}%`;
    $("details").textContent =
      `Fake probability ${share}% (threshold ${percent(body.threshold)}) · ${details}`;
    $("result").hidden = false;
  }

  function showOverlay(explanation, caption) {
    const img = $("overlay");
    img.src = `data:image/png;base64,${explanation.heatmap_png}`;
    img.alt = `Heat map (${explanation.method}) over the face crop the model scored`;
    $("overlay-caption").textContent = `${caption} (${explanation.method})`;
    $("overlay-figure").hidden = false;
  }

  async function drawSource(blob, box) {
    const image = await loadImage(blob);
    if (!image) return;
    const scale = Math.min(1, 640 / image.naturalWidth);
    const canvas = $("source-canvas");
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    if (box) {
      context.lineWidth = Math.max(2, canvas.width / 200);
      context.strokeStyle = "#ffd400";
      context.strokeRect(box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale);
    }
    $("source-figure").hidden = false;
  }

  function loadImage(blob) {
    if (sourceUrl) URL.revokeObjectURL(sourceUrl);
    sourceUrl = URL.createObjectURL(blob);
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => resolve(null);
      image.src = sourceUrl;
    });
  }

  function drawChart(body) {
    const svg = $("chart");
    svg.replaceChildren();
    const { width, height, left, right, top, bottom } = CHART;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const frames = body.frames;
    const end = Math.max(body.video.duration_s || 0, ...frames.map((f) => f.time_s), 1e-6);
    const x = (t) => left + (t / end) * plotW;
    const y = (p) => top + (1 - p) * plotH;

    for (const p of [0, 0.5, 1]) {
      line(svg, left, y(p), width - right, y(p), "grid");
      text(svg, left - 8, y(p) + 4, p.toFixed(1), "end");
    }
    line(svg, left, top, left, height - bottom, "axis");
    line(svg, left, height - bottom, width - right, height - bottom, "axis");
    text(svg, left, height - 8, "0 s", "start");
    text(svg, width - right, height - 8, `${end.toFixed(1)} s`, "end");
    line(svg, left, y(body.threshold), width - right, y(body.threshold), "threshold");

    const scored = frames.filter((f) => f.fake_prob !== null);
    if (scored.length > 1) {
      const path = document.createElementNS(SVG_NS, "polyline");
      path.setAttribute("points", scored.map((f) => `${x(f.time_s)},${y(f.fake_prob)}`).join(" "));
      path.setAttribute("class", "series");
      svg.append(path);
    }
    const aggregate = line(svg, left, y(body.fake_prob), width - right, y(body.fake_prob), "aggregate");
    aggregate.setAttribute("data-value", String(body.fake_prob));
    const topProb = Math.max(...scored.map((f) => f.fake_prob), -1);
    for (const frame of frames) {
      const dot = document.createElementNS(SVG_NS, "circle");
      const missing = frame.fake_prob === null;
      dot.setAttribute("cx", String(x(frame.time_s)));
      dot.setAttribute("cy", String(missing ? height - bottom : y(frame.fake_prob)));
      dot.setAttribute("r", "4");
      dot.setAttribute("class", missing ? "point missing" : frame.fake_prob === topProb ? "point top" : "point");
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = missing
        ? `frame ${frame.index} at ${frame.time_s.toFixed(2)} s: no face`
        : `frame ${frame.index} at ${frame.time_s.toFixed(2)} s: ${percent(frame.fake_prob)} fake`;
      dot.append(title);
      svg.append(dot);
    }
    $("chart-desc").textContent =
      `${frames.length} sampled frames (${scored.length} with the face scored); dashed red: ` +
      `the video's ${body.aggregate} score ${percent(body.fake_prob)}; dotted: the threshold.`;
    $("chart-box").hidden = false;
  }

  function line(svg, x1, y1, x2, y2, cls) {
    const element = document.createElementNS(SVG_NS, "line");
    for (const [name, value] of Object.entries({ x1, y1, x2, y2 })) {
      element.setAttribute(name, String(value));
    }
    element.setAttribute("class", cls);
    svg.append(element);
    return element;
  }

  function text(svg, x, y, content, anchor) {
    const element = document.createElementNS(SVG_NS, "text");
    element.setAttribute("x", String(x));
    element.setAttribute("y", String(y));
    element.setAttribute("text-anchor", anchor);
    element.textContent = content;
    svg.append(element);
  }

  // A frame of the video at time_s, as a PNG blob (null when the browser cannot decode it).
  function grabFrame(file, timeS) {
    return new Promise((resolve) => {
      const url = URL.createObjectURL(file);
      const video = document.createElement("video");
      video.muted = true;
      video.preload = "auto";
      const done = (blob) => {
        clearTimeout(timer);
        URL.revokeObjectURL(url);
        resolve(blob);
      };
      const timer = setTimeout(() => done(null), 15000);
      video.onerror = () => done(null);
      video.onloadeddata = () => {
        video.onseeked = () => {
          const canvas = document.createElement("canvas");
          canvas.width = video.videoWidth;
          canvas.height = video.videoHeight;
          canvas.getContext("2d").drawImage(video, 0, 0);
          canvas.toBlob((blob) => done(blob), "image/png");
        };
        video.currentTime = Math.min(timeS, Math.max(0, video.duration - 0.001));
      };
      video.src = url;
    });
  }

  // ------------------------------------------------------------------ small things
  function resetResult() {
    $("error").hidden = true;
    $("result").hidden = true;
    $("chart-box").hidden = true;
    $("source-figure").hidden = true;
    $("overlay-figure").hidden = true;
    $("overlay").removeAttribute("src");
    $("source-caption").textContent = "Your picture, with the face the model looked at";
  }

  function setBusy(busy, message) {
    $("submit").disabled = busy;
    form.setAttribute("aria-busy", String(busy));
    if (busy) showStatus(message);
    else if ($("status").dataset.sticky !== "1") $("status").hidden = true;
  }

  function showStatus(message, sticky) {
    const status = $("status");
    status.textContent = message;
    status.dataset.sticky = sticky ? "1" : "0";
    status.hidden = false;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    $("status").hidden = true;
  }

  function isVideoFile(file) {
    if (file.type) return file.type.startsWith("video/");
    return /\.(mp4|m4v|mov|webm|mkv|avi)$/i.test(file.name);
  }

  function percent(p) {
    return `${Math.round(p * 1000) / 10}%`;
  }

  function sentence(message) {
    const trimmed = message.trim();
    if (!trimmed) return "";
    const first = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?]$/.test(first) ? first : `${first}.`;
  }

  function formatBytes(size) {
    if (size < 1024) return `${size} B`;
    if (size < 1024 * 1024) return `${(size / 1024).toFixed(0)} KB`;
    return `${(size / 1024 / 1024).toFixed(1)} MB`;
  }
})();
