// The page for people (index.html): pick or drop a photo or a video, send it to the API, show
// what came back. Plain ES2020, no dependencies. Everything the server sends is shown as text
// (textContent), never as markup. The page's state is mirrored in data-* attributes of #app
// (data-state: idle / loading / done / error; data-status: the HTTP status) for tests.

const ROUTES = {
  detect: '/api/v1/detect/',
  augmented: '/api/v1/detect/augmented',
  video: '/api/v1/detect/video',
};
const VERDICT_WORDS = {
  likely_fake: 'Likely fake',
  uncertain: 'Uncertain',
  likely_real: 'Likely real',
  no_face: 'No face found',
};
const VERDICTS = ['likely_fake', 'uncertain', 'likely_real'];
const VIDEO_NAME = /\.(mp4|m4v|webm|mov|avi|mkv|mpe?g|ogv|3gp)$/i;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
// Until the model's own metadata arrives (/api/v1/model/info): the decision point of the
// served P(fake), the same for every model; no uncertain band is drawn without the metadata.
const DECISION_POINT = 0.5;

const app = document.getElementById('app');
const part = (role, root = document) => root.querySelector(`[data-role="${role}"]`);
const parts = (role, root = document) => [...root.querySelectorAll(`[data-role="${role}"]`)];

const ui = {
  file: part('file'),
  drop: part('drop'),
  heatmaps: part('heatmaps'),
  inDepth: part('in-depth'),
  frames: part('frames'),
  analyze: part('analyze'),
  apiOrigin: part('api-origin'),
  apiField: part('api-field'),
  serverPanel: part('server-panel'),
  keyForm: part('key-form'),
  keyState: part('key-state'),
  keyField: part('key-field'),
  keyForget: part('key-forget'),
  notice: part('notice'),
  progress: part('progress'),
  error: part('error'),
  result: part('result'),
  verdict: part('image-verdict'),
  fakeCount: part('fake-count'),
  summaryHint: part('summary-hint'),
  verdictReason: part('verdict-reason'),
  provenance: part('provenance'),
  provenanceItems: part('provenance-items'),
  stage: part('stage'),
  photo: part('photo'),
  video: part('video'),
  overlay: part('overlay'),
  explanation: part('explanation'),
  facesTitle: part('faces-title'),
  faces: part('faces'),
  variants: part('variants'),
  variantsHint: part('variants-hint'),
  variantRows: part('variant-rows'),
  vote: part('vote'),
  tracks: part('tracks'),
  videoInfo: part('video-info'),
  trackList: part('track-list'),
};

// ---- Where the API is: this page's origin, or ?api=scheme://host:port

function parseOrigin(text) {
  try {
    const url = new URL(text);
    const bare = (url.pathname === '/' || url.pathname === '') && !url.search && !url.hash;
    if ((url.protocol === 'http:' || url.protocol === 'https:') && bare && !url.username) return url.origin;
  } catch {
    // not a URL: refused below
  }
  return null;
}

const given = new URLSearchParams(window.location.search).get('api');
// Served by the API itself, the page may talk to the origins its operator allowed (the
// server's DEEPFAKE_UI_API_ORIGINS, also its Content-Security-Policy); as static files from
// elsewhere (no such list), to any: that server's headers decide.
const allowedList = document.documentElement.dataset.apiOrigins;
const allowed = (origin) =>
  origin === window.location.origin || allowedList === undefined || allowedList.split(' ').includes(origin);
const wanted = given && parseOrigin(given);
const API = (wanted && allowed(wanted) && wanted) || window.location.origin;
const KEY_SLOT = `deepfake-ui:key:${API}`;

// ---- The API key, kept in this tab only

function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_SLOT) || '';
  } catch {
    return '';
  }
}

function storeKey(key) {
  try {
    if (key) window.sessionStorage.setItem(KEY_SLOT, key);
    else window.sessionStorage.removeItem(KEY_SLOT);
  } catch {
    // storage off: the key lasts until the page is left
  }
}

// ---- What the page knows of the server

const state = {
  file: null,
  fileUrl: null,
  kind: null, // the route of the answer shown: detect / augmented / video
  answer: null,
  run: 0, // the latest analysis; an older one's answer is dropped
  explain: null, // null: not known yet; true: the server makes heatmaps; false: it does not
  key: storedKey(),
};

// The model's metadata: its verdict bands and decision point; null when the server will not say.
const modelInfo = fetch(`${API}/api/v1/model/info`, { credentials: 'omit' })
  .then((response) => (response.ok ? response.json() : null))
  .catch(() => null);

function bandsOf(info) {
  const bands = info && info.verdict_bands;
  const threshold = info && typeof info.threshold === 'number' ? info.threshold : DECISION_POINT;
  if (bands && typeof bands.real_up_to === 'number' && typeof bands.fake_from === 'number') {
    return { low: bands.real_up_to, high: bands.fake_from, threshold };
  }
  return { low: null, high: null, threshold };
}

// ---- Small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'class') node.className = value;
    else if (name === 'text') node.textContent = value;
    else if (name.startsWith('data-'))
      node.dataset[name.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const svgEl = (tag, attrs = {}) => {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
};

const percent = (p) => `${(p * 100).toFixed(1)} %`;
const pct = (value, whole) => `${((value / whole) * 100).toFixed(4)}%`;
const verdictOf = (v) => (VERDICT_WORDS[v] ? v : 'uncertain');
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
const prettyVariant = (name) => {
  const words = String(name).replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
};

function isVideo(file) {
  return (file.type || '').startsWith('video/') || VIDEO_NAME.test(file.name || '');
}

function place(node, [x, y, w, h], [width, height]) {
  // Percentages of the displayed image: the boxes follow it at any size.
  node.style.left = pct(x, width);
  node.style.top = pct(y, height);
  node.style.width = pct(w, width);
  node.style.height = pct(h, height);
}

function setState(name, status) {
  app.dataset.state = name;
  if (status === undefined) delete app.dataset.status;
  else app.dataset.status = String(status);
}

function show(node, visible) {
  node.hidden = !visible;
}

function say(node, text) {
  node.textContent = text || '';
  show(node, Boolean(text));
}

// A P(fake) bar: 0 at the left, 1 at the right, the decision point marked, the uncertain band
// hatched and labelled, the value as a marker and in words.
function probabilityBar(p, bands, role) {
  if (typeof p !== 'number' || !Number.isFinite(p)) {
    return el('p', { class: 'hint', 'data-role': `${role}-value`, text: 'P(fake): not given' });
  }
  const words = [`P(fake) ${percent(p)}`, `decision at ${percent(bands.threshold)}`];
  if (bands.low !== null) words.push(`uncertain from ${percent(bands.low)} to ${percent(bands.high)}`);
  const track = el('div', { class: 'pbar-track' });
  if (bands.low !== null) {
    const band = el('div', { class: 'pbar-band', 'data-role': 'band' }, el('span', { text: 'uncertain' }));
    band.style.left = pct(bands.low, 1);
    band.style.width = pct(bands.high - bands.low, 1);
    track.append(band);
  }
  const fill = el('div', { class: `pbar-fill ${p >= bands.threshold ? 'fake' : 'real'}` });
  fill.style.width = pct(Math.min(Math.max(p, 0), 1), 1);
  const decision = el('div', { class: 'pbar-decision', title: `decision at ${percent(bands.threshold)}` });
  decision.style.left = pct(bands.threshold, 1);
  const marker = el('div', { class: 'pbar-marker' });
  marker.style.left = pct(Math.min(Math.max(p, 0), 1), 1);
  track.append(fill, decision, marker);
  return el(
    'div',
    { class: 'pbar', 'data-role': role, 'data-p': String(p) },
    el('span', { class: 'pbar-value', 'data-role': `${role}-value`, text: `P(fake) ${percent(p)}` }),
    el('div', { class: 'pbar-graphic', role: 'img', 'aria-label': words.join(', ') }, track),
    el(
      'div',
      { class: 'pbar-scale', 'aria-hidden': 'true' },
      el('span', { text: 'real' }),
      el('span', { text: 'fake' }),
    ),
  );
}

// ---- Errors in plain words

function seconds(retryAfter) {
  const n = Number.parseInt(retryAfter || '', 10);
  return Number.isFinite(n) && n >= 0 ? n : null;
}

function bytesIn(text) {
  const match = /larger than (\d+) bytes/.exec(text || '');
  if (!match) return '';
  const n = Number(match[1]);
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} KB`;
}

const STATUS_CODES = {
  401: 'UNAUTHORIZED',
  404: 'NOT_FOUND',
  408: 'REQUEST_TIMEOUT',
  413: 'FILE_TOO_LARGE',
  415: 'UNSUPPORTED_FORMAT',
  422: 'NO_FACE',
  429: 'RATE_LIMITED',
  503: 'SERVICE_OVERLOADED',
  504: 'TIMEOUT',
};

function describeError(outcome) {
  const { status, body, retryAfter, kind, sentKey } = outcome;
  const code = (body && typeof body.error_code === 'string' && body.error_code) || STATUS_CODES[status] || '';
  const wait = seconds(retryAfter);
  const later = wait === null ? 'in a little while' : `in ${wait} s`;
  const video = kind === 'video';
  const limit = bytesIn(body && body.error);
  switch (code) {
    case 'FILE_TOO_LARGE':
      return (
        `This file is too large for the server${limit ? ` (it takes files up to ${limit})` : ''}. ` +
        'Choose a smaller file.'
      );
    case 'IMAGE_TOO_LARGE':
      return 'This image has too many pixels for the server. Choose a smaller copy of it.';
    case 'VIDEO_TOO_LARGE':
      return 'The frames of this video are too large for the server. Choose a smaller copy of it.';
    case 'VIDEO_TOO_LONG':
      return 'This video is too long for the server. Choose a shorter clip.';
    case 'UNSUPPORTED_FORMAT':
      return video
        ? 'The server cannot read this video format.'
        : 'This is not an image the server can read. Use a JPEG, PNG, WebP, BMP or GIF file.';
    case 'INVALID_IMAGE':
      return 'This image is damaged or cut short: the server cannot decode it.';
    case 'INVALID_VIDEO':
      return 'This video is damaged or cut short: the server cannot decode it.';
    case 'EMPTY_FILE':
      return 'This file is empty.';
    case 'MISSING_FILE':
      return 'No file reached the server. Choose the file again.';
    case 'NO_FACE':
      return 'No face was found in this image, so there is nothing to judge.';
    case 'UNAUTHORIZED':
      return sentKey
        ? 'The server refused this API key. Check it and enter it again in the field below.'
        : 'This server needs an API key. Enter it in the API key field below.';
    case 'RATE_LIMITED':
      return `Too many requests from this address for now: try again ${later}.`;
    case 'SERVICE_OVERLOADED':
      return `The server is busy: try again ${later}.`;
    case 'MODEL_UNAVAILABLE':
      return `The model is not ready to answer: try again ${later}.`;
    case 'REQUEST_TIMEOUT':
      return 'The upload took too long to arrive. Try again, or with a smaller file.';
    case 'TIMEOUT':
      return 'The server took too long to answer. Try again in a moment.';
    case 'VIDEO_DECODE_FAILED':
      return 'The decoder stopped on this video: the server cannot read it to the end.';
    case 'VIDEO_TIMEOUT':
      return 'The video took too long to analyse. Try fewer frames, or a shorter clip.';
    case 'NOT_FOUND':
      return video
        ? 'This server does not analyse videos.'
        : 'This server has no such route: is it the right server?';
    default:
      if (status >= 500)
        return `The server failed on this request (${code || `status ${status}`}). Try again in a moment.`;
      return `The server could not take this file (${code || `status ${status}`}).`;
  }
}

function showError(message, outcome) {
  setState('error', outcome ? outcome.status : undefined);
  ui.progress.textContent = '';
  ui.error.replaceChildren(el('p', { 'data-role': 'error-text', text: message }));
  const detail = outcome && outcome.body && outcome.body.error;
  if (detail && outcome.status < 500) {
    ui.error.append(
      el('p', { class: 'hint', 'data-role': 'error-detail', text: `The server said: ${detail}` }),
    );
  }
  ui.error.dataset.code = (outcome && outcome.body && outcome.body.error_code) || '';
  show(ui.error, true);
}

// ---- Asking the server

async function post(kind, explain) {
  const form = new FormData();
  form.append('file', state.file, state.file.name || 'upload');
  if (explain) form.append('explain', 'true');
  // A photo with no face: the answer that says so (shown as "No face found"), not the legacy
  // routes' default 422 NO_FACE (which would be shown as an error, saying the same).
  if (kind !== 'video') form.append('require_face', 'false');
  const frames = Number.parseInt(ui.frames.value, 10);
  if (kind === 'video' && Number.isFinite(frames) && frames > 0) form.append('frames', String(frames));
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const response = await fetch(API + ROUTES[kind], {
    method: 'POST',
    body: form,
    headers,
    credentials: 'omit',
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // not JSON (a proxy's page): described by its status
  }
  return {
    status: response.status,
    ok: response.ok,
    body,
    retryAfter: response.headers.get('Retry-After'),
    kind,
    explain,
    sentKey: Boolean(state.key),
  };
}

// A 400 that names `explain` (a server from before heatmaps refuses fields it does not take), or
// 422 EXPLAIN_UNAVAILABLE (its model has no layer to compute them on).
function refusedExplain(outcome) {
  const body = outcome.body || {};
  if (!outcome.explain) return false;
  if (outcome.status === 422 && body.error_code === 'EXPLAIN_UNAVAILABLE') return true;
  return outcome.status === 400 && /explain/.test(`${body.error || ''} ${body.details || ''}`);
}

function faceList(answer) {
  return Array.isArray(answer && answer.faces) ? answer.faces : [];
}

// What heatmaps belong to: the faces of a photo, the tracks of a video.
function explained(answer) {
  return [...faceList(answer), ...(Array.isArray(answer && answer.tracks) ? answer.tracks : [])];
}

async function analyse() {
  if (!state.file) return;
  const run = ++state.run;
  const kind = isVideo(state.file) ? 'video' : ui.inDepth.checked ? 'augmented' : 'detect';
  const explain = ui.heatmaps.checked && state.explain !== false;
  setState('loading');
  app.dataset.kind = kind;
  app.dataset.explainSent = String(explain);
  show(ui.error, false);
  say(ui.notice, '');
  ui.progress.textContent = kind === 'video' ? 'Analysing the video…' : 'Analysing…';
  ui.analyze.disabled = true;
  let outcome;
  try {
    outcome = await post(kind, explain);
    if (refusedExplain(outcome)) {
      state.explain = false;
      outcome = await post(kind, false);
      app.dataset.explainSent = 'false';
      if (run === state.run)
        say(ui.notice, 'This server does not make heatmaps: the result is shown without them.');
    }
  } catch {
    if (run !== state.run) return;
    ui.analyze.disabled = false;
    showError(
      `Could not reach the server at ${API}. Is it running, and does it let this page's origin in ` +
        '(DEEPFAKE_CORS_ORIGINS)?',
    );
    return;
  }
  if (run !== state.run) return;
  ui.analyze.disabled = false;
  if (!outcome.ok || !outcome.body) {
    showError(describeError(outcome), outcome);
    if (outcome.status === 401) askForKey(outcome.sentKey);
    return;
  }
  const items = explained(outcome.body);
  if (outcome.explain) {
    if (items.some((item) => item && item.heatmap)) state.explain = true;
    else if (items.length) say(ui.notice, 'The server sent no heatmaps for these faces.');
  }
  state.kind = kind;
  state.answer = outcome.body;
  const bands = bandsOf(await modelInfo);
  if (run !== state.run) return;
  try {
    if (kind === 'video') renderVideo(outcome.body, bands);
    else renderImage(outcome.body, kind, bands);
  } catch (error) {
    showError('The server sent an answer this page cannot read.');
    console.error(error);
    return;
  }
  ui.progress.textContent = 'Done.';
  setState('done', outcome.status);
}

function askForKey(refused) {
  ui.serverPanel.open = true;
  ui.keyField.value = '';
  ui.keyField.setAttribute('aria-invalid', String(refused));
  ui.keyField.focus();
}

// ---- Showing an image's answer

function summarise(verdict, fake, total, unit, hint) {
  const word = VERDICT_WORDS[verdict] || verdict;
  ui.verdict.replaceChildren(
    el('span', { class: `badge ${verdict}`, 'data-role': 'image-verdict-word', text: word }),
  );
  ui.verdict.dataset.verdict = verdict;
  ui.fakeCount.textContent = total ? `${fake} of ${plural(total, unit, `${unit}s`)} looked fake.` : '';
  ui.fakeCount.dataset.fake = String(fake);
  ui.fakeCount.dataset.total = String(total);
  ui.summaryHint.textContent = hint;
}

function faceBox(face, index, size, label = String(index + 1)) {
  const verdict = verdictOf(face.verdict);
  const box = el(
    'div',
    {
      class: `box ${verdict}`,
      'data-role': 'face-box',
      'data-index': String(index),
      'data-verdict': verdict,
    },
    el('span', { class: 'tag', text: `${label} ${(VERDICT_WORDS[verdict] || '').toLowerCase()}` }),
  );
  place(box, face.box, size);
  return box;
}

function heatmapOverlay(face, index, size) {
  const map = face.heatmap;
  if (!map || typeof map.png !== 'string' || !BASE64.test(map.png) || !Array.isArray(map.box)) return null;
  const image = el('img', { class: 'heatmap', alt: '', 'data-role': 'heatmap', 'data-index': String(index) });
  image.src = `data:image/png;base64,${map.png}`;
  place(image, map.box, size);
  return image;
}

function faceItem(face, index, bands, kind) {
  const verdict = verdictOf(face.verdict);
  const item = el(
    'li',
    { class: `face ${verdict}`, 'data-role': 'face', 'data-index': String(index), 'data-verdict': verdict },
    el(
      'p',
      { class: 'face-title' },
      el('strong', { text: `Face ${index + 1}` }),
      ' ',
      el('span', { class: `badge ${verdict}`, 'data-role': 'face-verdict', text: VERDICT_WORDS[verdict] }),
    ),
    probabilityBar(face.fake_probability, bands, 'face-bar'),
  );
  if (kind === 'augmented' && typeof face.variants_fake === 'number') {
    const spread = typeof face.spread === 'number' ? `; spread of P(fake) ${percent(face.spread)}` : '';
    item.append(
      el('p', {
        class: 'hint',
        'data-role': 'face-vote',
        text: `${face.variants_fake} of 7 variants judged fake${spread}.`,
      }),
    );
  }
  return item;
}

function showMedia(kind) {
  show(ui.photo, kind !== 'video');
  show(ui.video, kind === 'video');
}

function renderImage(answer, kind, bands) {
  const detect = kind === 'augmented' ? answer.original_prediction || {} : answer;
  const size = answer.image_size || detect.image_size;
  const faces = faceList(answer);
  const fake =
    kind === 'augmented' ? faces.filter((f) => f.prediction === 'fake').length : (answer.fake_faces ?? 0);
  const verdict = answer.verdict || (faces.length ? 'uncertain' : 'no_face');
  let hint = '';
  if (verdict === 'no_face') hint = 'No face was found in this image, so nothing was judged.';
  else if (detect.input_kind === 'face_crop') hint = 'The upload was judged as one face crop, as it is.';
  else if (faces.length > 1) {
    hint =
      'A photo of several faces is judged by its most-fake face, ' +
      'against a bar raised for the number of faces.';
  }
  summarise(verdict, fake, faces.length, 'face', hint);
  renderProvenance(answer.provenance ? answer : detect);
  showMedia(kind);
  ui.overlay.replaceChildren();
  if (Array.isArray(size) && size[0] > 0 && size[1] > 0) {
    faces.forEach((face, i) => {
      ui.overlay.append(faceBox(face, i, size));
      const map = heatmapOverlay(face, i, size);
      if (map) ui.overlay.prepend(map); // under the boxes
    });
  }
  ui.stage.classList.toggle('show-heatmaps', ui.heatmaps.checked);
  const how = answer.explanation || detect.explanation;
  say(ui.explanation, how && how.method ? `Heatmaps: ${how.method}.` : '');
  ui.facesTitle.textContent = faces.length ? 'Faces' : '';
  ui.faces.replaceChildren(...faces.map((face, i) => faceItem(face, i, bands, kind)));
  renderVariants(answer, kind, faces, bands);
  show(ui.tracks, false);
  show(ui.result, true);
}

function renderVariants(answer, kind, faces, bands) {
  const rows = Array.isArray(answer.augmented_predictions) ? answer.augmented_predictions : [];
  show(ui.variants, kind === 'augmented' && rows.length > 0);
  if (kind !== 'augmented' || !rows.length) return;
  const deciding = faces.reduce(
    (best, face, i) => (face.fake_probability > faces[best].fake_probability ? i : best),
    0,
  );
  const original = answer.original_prediction || {};
  const all = [
    {
      augmentation_type: 'original',
      prediction: original.prediction,
      fake_probability: original.fake_probability,
    },
    ...rows,
  ];
  ui.variantRows.replaceChildren(
    ...all.map((row) =>
      el(
        'tr',
        { 'data-role': 'variant', 'data-variant': row.augmentation_type },
        el('th', { scope: 'row', 'data-role': 'variant-name', text: prettyVariant(row.augmentation_type) }),
        el(
          'td',
          {},
          el('span', {
            class: `badge ${row.prediction === 'fake' ? 'likely_fake' : 'likely_real'}`,
            'data-role': 'variant-label',
            text: row.prediction || '',
          }),
        ),
        el(
          'td',
          {},
          typeof row.fake_probability === 'number'
            ? probabilityBar(row.fake_probability, bands, 'variant-bar')
            : '',
        ),
      ),
    ),
  );
  const info = answer.debug_info || {};
  const group =
    faces.length > 1 ? ' In a photo of several faces they are judged against the raised bar.' : '';
  ui.variantsHint.textContent = `Face ${deciding + 1} is the most fake and decides the photo.${group}`;
  ui.vote.textContent =
    `${info.predictions_below_threshold} of ${info.total_predictions} variants say fake: ` +
    `the vote is ${answer.consensus_prediction}, mean confidence ${percent(answer.average_confidence)}.`;
  ui.vote.dataset.fake = String(info.predictions_below_threshold);
}

// ---- What the file declares (the answer's `provenance`): said in words, as text only

const AI_WORDS = { generated: 'AI-generated', edited: 'AI-edited' };
const sourceName = (uri) => String(uri || '').replace(/\/+$/, '').split('/').pop();

function credentialsState(c2pa) {
  if (!c2pa) return 'not_checked';
  if (c2pa.remote_url) return 'remote';
  if (!c2pa.present) return 'absent';
  if (c2pa.trusted) return 'trusted';
  return c2pa.valid ? 'untrusted' : 'invalid';
}

function credentialsWords(c2pa, stateName) {
  const signer = c2pa && c2pa.signer ? c2pa.signer : {};
  const who = signer.subject ? `signed by ${signer.subject}` : 'signed';
  const issuer = signer.issuer ? `, issued by ${signer.issuer}` : '';
  switch (stateName) {
    case 'absent':
      return 'Content Credentials: none in this file.';
    case 'remote':
      return `Content Credentials: not in the file but at ${c2pa.remote_url}, which this server does not fetch.`;
    case 'trusted':
      return `Content Credentials: valid, ${who}${issuer}: on this server's trust list.`;
    case 'untrusted':
      return (
        `Content Credentials: intact, ${who}${issuer}, but not on this server's trust list: ` +
        'reported, not trusted.'
      );
    case 'invalid': {
      const why = (c2pa.failures && c2pa.failures.length ? c2pa.failures.join(', ') : c2pa.error) || 'unreadable';
      const claimed = signer.subject ? ` They say they are ${who}${issuer}.` : '';
      return `Content Credentials: invalid (${why}): not to be relied on.${claimed}`;
    }
    default:
      return '';
  }
}

function declarationWords(c2pa) {
  const types = Array.isArray(c2pa.digital_source_types) ? c2pa.digital_source_types.map(sourceName) : [];
  const parts = [];
  if (types.length) {
    const what = AI_WORDS[c2pa.ai] ? `${AI_WORDS[c2pa.ai]} ` : '';
    parts.push(`They declare the image ${what}(${types.join(', ')})`);
  }
  if (AI_WORDS[c2pa.ingredients_ai]) parts.push(`its history declares it ${AI_WORDS[c2pa.ingredients_ai]}`);
  if (c2pa.claim_generator) parts.push(`made with ${c2pa.claim_generator}`);
  return parts.length ? `${parts.join('; ')}.` : '';
}

function renderProvenance(answer) {
  const provenance = answer && answer.provenance;
  say(ui.verdictReason, answer && typeof answer.reason === 'string' ? answer.reason : '');
  show(ui.provenance, Boolean(provenance));
  if (!provenance) {
    ui.provenanceItems.replaceChildren();
    delete ui.provenance.dataset.c2pa;
    return;
  }
  const items = [];
  const c2pa = provenance.c2pa;
  const stateName = credentialsState(c2pa);
  ui.provenance.dataset.c2pa = stateName;
  ui.provenance.dataset.ai = (c2pa && c2pa.ai) || '';
  ui.provenance.dataset.decides = String(Boolean(provenance.decides));
  if (c2pa) {
    const item = el('li', { 'data-role': 'provenance-c2pa', 'data-state': stateName }, credentialsWords(c2pa, stateName));
    const declared = c2pa.present ? declarationWords(c2pa) : '';
    if (declared) item.append(' ', el('span', { 'data-role': 'provenance-declared', text: declared }));
    items.push(item);
  }
  if (provenance.xmp) {
    const ai = AI_WORDS[provenance.xmp.ai] ? ` (${AI_WORDS[provenance.xmp.ai]})` : '';
    items.push(
      el('li', {
        'data-role': 'provenance-xmp',
        text: `XMP says ${sourceName(provenance.xmp.digital_source_type)}${ai}: an unsigned claim, anyone can write it.`,
      }),
    );
  }
  const marks = Array.isArray(provenance.watermarks) ? provenance.watermarks : [];
  for (const mark of marks) {
    items.push(
      el('li', {
        'data-role': 'provenance-watermark',
        text: `Invisible watermark of ${mark.name} found (${percent(mark.agreement)} of its bits): unsigned, reported only.`,
      }),
    );
  }
  if (!marks.length && (provenance.checked || []).includes('watermark')) {
    items.push(el('li', { 'data-role': 'provenance-watermark', text: 'No known invisible watermark found.' }));
  }
  for (const [what, why] of Object.entries(provenance.not_checked || {})) {
    items.push(el('li', { class: 'hint', 'data-role': 'provenance-not-checked', text: `Not checked: ${what} (${why}).` }));
  }
  ui.provenanceItems.replaceChildren(...items);
}

// ---- Showing a video's answer

function renderVideo(answer, bands) {
  const video = answer.video || {};
  const tracks = Array.isArray(answer.tracks) ? answer.tracks : [];
  const threshold = bands.threshold;
  const fake =
    typeof answer.fake_tracks === 'number'
      ? answer.fake_tracks
      : tracks.filter((t) => t.fake_probability >= threshold).length;
  const verdict = answer.verdict || (tracks.length ? 'uncertain' : 'no_face');
  summarise(
    verdict,
    fake,
    tracks.length,
    'face',
    verdict === 'no_face'
      ? 'No face was found in the sampled frames.'
      : 'A face is followed through the sampled frames; it is judged from all of them.',
  );
  renderProvenance(answer);
  showMedia('video');
  ui.stage.classList.toggle('show-heatmaps', ui.heatmaps.checked);
  say(ui.explanation, '');
  ui.overlay.replaceChildren();
  ui.faces.replaceChildren();
  ui.facesTitle.textContent = '';
  show(ui.variants, false);
  const facts = [];
  if (typeof video.duration_s === 'number') facts.push(`${video.duration_s.toFixed(1)} s`);
  if (video.width && video.height) facts.push(`${video.width}×${video.height}`);
  if (video.codec) facts.push(String(video.codec));
  if (typeof video.frames_sampled === 'number')
    facts.push(`${video.frames_decoded ?? '?'} of ${video.frames_sampled} sampled frames decoded`);
  ui.videoInfo.textContent = facts.join(', ');
  ui.trackList.replaceChildren(...tracks.map((track, i) => trackItem(track, i, video, bands)));
  show(ui.tracks, true);
  show(ui.result, true);
  state.videoBoxes = { tracks, video };
  drawVideoBoxes();
}

function trackItem(track, index, video, bands) {
  const verdict = verdictOf(track.verdict);
  const frames = Array.isArray(track.frames) ? track.frames : [];
  const count = track.frame_count ?? frames.length;
  const share =
    typeof track.fake_share === 'number' ? `, judged fake in ${percent(track.fake_share)} of them` : '';
  const counted = track.counted === false ? ' Seen on too few frames to count toward the verdict.' : '';
  return el(
    'li',
    {
      class: `track ${verdict}`,
      'data-role': 'track',
      'data-track-id': String(track.track_id ?? index),
      'data-verdict': verdict,
    },
    el(
      'p',
      { class: 'face-title' },
      el('strong', { text: `Face ${index + 1}` }),
      ' ',
      el('span', { class: `badge ${verdict}`, 'data-role': 'track-verdict', text: VERDICT_WORDS[verdict] }),
    ),
    el('p', {
      class: 'hint',
      'data-role': 'track-frames',
      text: `${plural(count, 'frame', 'frames')}${share}.${counted}`,
    }),
    probabilityBar(track.fake_probability, bands, 'track-bar'),
    timeline(frames, video.duration_s, bands),
  );
}

// P(fake) of each frame of a track over the video's time, with the decision point.
function timeline(frames, duration, bands) {
  const width = 300;
  const height = 48;
  const end = duration > 0 ? duration : Math.max(1e-6, ...frames.map((f) => f.time || 0));
  const x = (t) => ((t / end) * width).toFixed(1);
  const y = (p) => (height - p * height).toFixed(1);
  const svg = svgEl('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: 'timeline',
    'data-role': 'timeline',
    role: 'img',
  });
  svg.setAttribute('aria-label', `P(fake) of this face in ${frames.length} frames over ${end.toFixed(1)} s`);
  if (bands.low !== null) {
    svg.append(
      svgEl('rect', {
        x: 0,
        y: y(bands.high),
        width,
        height: (bands.high - bands.low) * height,
        class: 'timeline-band',
      }),
    );
  }
  svg.append(
    svgEl('line', {
      x1: 0,
      x2: width,
      y1: y(bands.threshold),
      y2: y(bands.threshold),
      class: 'timeline-decision',
    }),
  );
  const points = frames
    .filter((f) => typeof f.fake_probability === 'number')
    .map((f) => `${x(f.time || 0)},${y(f.fake_probability)}`);
  if (points.length) svg.append(svgEl('polyline', { points: points.join(' '), class: 'timeline-line' }));
  for (const f of frames) {
    if (typeof f.fake_probability !== 'number') continue;
    svg.append(
      svgEl('circle', {
        cx: x(f.time || 0),
        cy: y(f.fake_probability),
        r: 2.5,
        class: f.fake_probability >= bands.threshold ? 'fake' : 'real',
      }),
    );
  }
  return svg;
}

// The boxes of the sampled frame nearest the video's current time (none between far samples).
function drawVideoBoxes() {
  if (state.kind !== 'video' || !state.videoBoxes) return;
  const { tracks, video } = state.videoBoxes;
  const size = [video.width, video.height];
  if (!(size[0] > 0 && size[1] > 0)) return;
  const step =
    video.duration_s > 0 && video.frames_sampled > 0 ? video.duration_s / video.frames_sampled : 0.5;
  const now = ui.video.currentTime || 0;
  const boxes = [];
  tracks.forEach((track, i) => {
    const frames = Array.isArray(track.frames) ? track.frames : [];
    let nearest = null;
    for (const f of frames)
      if (!nearest || Math.abs(f.time - now) < Math.abs(nearest.time - now)) nearest = f;
    if (nearest && Math.abs(nearest.time - now) <= step && Array.isArray(nearest.box)) {
      boxes.push(faceBox({ box: nearest.box, verdict: track.verdict }, i, size));
    }
    // A track's heatmap belongs to one frame (its most-fake): shown while the video is there.
    const map = heatmapOverlay(track, i, size);
    if (map && typeof track.heatmap_time === 'number' && Math.abs(track.heatmap_time - now) <= step) {
      boxes.unshift(map);
    }
  });
  ui.overlay.replaceChildren(...boxes);
}

// ---- Choosing a file

function useFile(file) {
  if (!file) return;
  if (state.fileUrl) URL.revokeObjectURL(state.fileUrl);
  state.file = file;
  state.fileUrl = URL.createObjectURL(file);
  state.answer = null;
  state.kind = null;
  state.videoBoxes = null;
  say(ui.explanation, '');
  ui.overlay.replaceChildren();
  ui.faces.replaceChildren();
  show(ui.variants, false);
  show(ui.tracks, false);
  summarise('', 0, 0, 'face', '');
  renderProvenance(null);
  ui.verdict.replaceChildren();
  const video = isVideo(file);
  delete app.dataset.mediaLoaded;
  if (video) {
    ui.photo.removeAttribute('src');
    ui.video.src = state.fileUrl;
  } else {
    ui.video.removeAttribute('src');
    ui.photo.src = state.fileUrl;
  }
  showMedia(video ? 'video' : 'detect');
  show(ui.result, true);
  analyse();
}

ui.photo.addEventListener('load', () => {
  app.dataset.mediaLoaded = 'true';
});
ui.video.addEventListener('loadedmetadata', () => {
  app.dataset.mediaLoaded = 'true';
});
ui.video.addEventListener('error', () => {
  app.dataset.mediaLoaded = 'failed'; // the analysis does not need the browser to play it
  say(ui.notice, 'This browser cannot play this video; the analysis is shown all the same.');
});
ui.video.addEventListener('timeupdate', drawVideoBoxes);
ui.video.addEventListener('seeked', drawVideoBoxes);

ui.file.addEventListener('change', () => useFile(ui.file.files && ui.file.files[0]));
ui.drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  ui.drop.classList.add('dragging');
});
ui.drop.addEventListener('dragleave', () => ui.drop.classList.remove('dragging'));
ui.drop.addEventListener('drop', (event) => {
  event.preventDefault();
  ui.drop.classList.remove('dragging');
  useFile(event.dataTransfer && event.dataTransfer.files[0]);
});
ui.analyze.addEventListener('click', analyse);

ui.heatmaps.addEventListener('change', () => {
  ui.stage.classList.toggle('show-heatmaps', ui.heatmaps.checked);
  if (!ui.heatmaps.checked || !state.answer) return;
  if (state.explain === false) {
    say(ui.notice, 'This server does not make heatmaps.');
  } else if (!explained(state.answer).some((item) => item && item.heatmap)) {
    analyse(); // ask again, with explain=true
  }
});
ui.inDepth.addEventListener('change', () => {
  if (state.file && !isVideo(state.file)) analyse();
});

ui.keyForm.addEventListener('submit', (event) => {
  event.preventDefault();
  state.key = ui.keyField.value.trim();
  storeKey(state.key);
  ui.keyField.value = '';
  ui.keyField.removeAttribute('aria-invalid');
  say(ui.notice, state.key ? 'Key saved for this tab.' : '');
  showKeyState();
  if (state.file) analyse();
});
ui.keyForget.addEventListener('click', () => {
  state.key = '';
  storeKey('');
  say(ui.notice, 'Key forgotten.');
  showKeyState();
});

function showKeyState() {
  ui.keyState.textContent = state.key ? 'A key is set for this server.' : 'No key is set.';
}

// ---- Start

ui.apiOrigin.textContent = API;
if (given && !wanted) {
  showError(`"${given}" is not a server address (scheme://host:port); using ${API}.`);
} else if (wanted && !allowed(wanted)) {
  showError(`This page may not talk to ${wanted}: its server allows only the servers its operator named; using ${API}.`);
}
if (given) ui.apiField.value = API;
for (const link of parts('docs-link')) link.href = `${API}/api/v1/docs`;
showKeyState();
ui.analyze.disabled = true;
ui.file.addEventListener('change', () => {
  ui.analyze.disabled = !ui.file.files.length;
});
app.dataset.ready = 'true';
