// resultcast browser client: watch job results over one shared WebSocket per page.
//
//   import {watch, submit} from "/static/resultcast.js";
//   const {job, token} = await submit("count", {n: 5});
//   watch(job, token, {onEvent: (e) => console.log(e.seq, e.data), onDone: (e) => ..., onError: (err) => ...});
//
// Guarantees it keeps for you: every event once, in `seq` order. When the socket drops (a
// gateway restarting, a network blip) it reconnects with jittered backoff and watches again
// from the last `id` it delivered, dropping anything it already delivered. A watch may go
// over Server-Sent Events instead (`transport: "sse"`, one EventSource per job), and with the
// default `"auto"` it does once WebSocket connections keep failing to open (a proxy that
// refuses upgrades); the guarantees are the same. No dependencies.

/**
 * @typedef {{type: "event", job: string, id: string, seq: number,
 *            event: "data" | "done" | "failed", data: any, ts: number}} ResultEvent
 * @typedef {{code: string, message: string, job?: string, transient: boolean}} ResultError
 *   `transient` errors (busy, capacity, unavailable) need nothing from you: the watch goes on
 *   and every event still arrives. Any other error ends the watch.
 * @typedef {{after?: string | null,
 *            transport?: "auto" | "ws" | "sse",
 *            onEvent?: (event: ResultEvent) => void,
 *            onDone?: (event: ResultEvent) => void,
 *            onError?: (error: ResultError) => void}} WatchOptions
 * @typedef {"idle" | "connecting" | "connected" | "reconnecting" | "closed"} SocketState
 * @typedef {{state: SocketState, attempt: number, delayMs?: number, closeCode?: number,
 *            resumed?: Array<{job: string, after: string | null}>}} StateChange
 */

const TRANSIENT = new Set(["busy", "capacity", "unavailable"]);
// WebSocket connections that fail before they ever open, in a row, after which watches with
// `transport: "auto"` (the default) move to Server-Sent Events (a proxy that refuses upgrades).
const FALLBACK_AFTER = 3;
// Close codes after which reconnecting would only be refused again.
const FATAL_CLOSES = new Set([1008, 1009]);

/** @param {string | null | undefined} id */
function seqOf(id) {
  return id ? Number.parseInt(id.split("-")[0], 10) || 0 : 0;
}

/** Where the gateway that served this file answers: its root, also when it is mounted under
 * a path of another app (the file is `<root>static/resultcast.js`). */
const GATEWAY_ROOT = new URL("../", import.meta.url).href;

/** `path` under the gateway's root, or under `base` (an http(s) URL of a gateway's root). */
function gatewayUrl(path, base = GATEWAY_ROOT) {
  return new URL(path, base.endsWith("/") ? base : `${base}/`);
}

/** The gateway's WebSocket URL: the one that served this file, or the one at `base`. */
export function socketUrl(base = GATEWAY_ROOT) {
  const url = gatewayUrl("ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** One WebSocket shared by every watch of the page; reconnects and resumes by itself. */
export class Resultcast {
  /**
   * @param {string} [url] the gateway's `/ws` URL (default: this page's gateway)
   * @param {{onState?: (change: StateChange) => void, maxDelayMs?: number}} [options]
   */
  constructor(url = socketUrl(), {onState = () => {}, maxDelayMs = 10_000} = {}) {
    this.url = url;
    this.onState = onState;
    this.maxDelayMs = maxDelayMs;
    /** @type {Map<string, {token: string, lastId: string | null, lastSeq: number, options: WatchOptions, source: EventSource | null, retry: number}>} */
    this.watches = new Map();
    /** @type {WebSocket | null} */
    this.socket = null;
    this.attempt = 0;
    /** @type {SocketState} */
    this.state = "idle";
    this.timer = 0;
    // The gateway's HTTP root, for Server-Sent Events (`<root>jobs/<job>/events`).
    const root = new URL(url);
    root.protocol = root.protocol === "wss:" ? "https:" : "http:";
    root.pathname = root.pathname.replace(/ws$/, "");
    this.root = root.href;
    this.failedOpens = 0;  // WebSocket connections in a row that never opened
    this.useSse = false;  // "auto" watches go over SSE since WebSockets kept failing
  }

  /**
   * Watch a job's events: those after `options.after` (all when absent), then live ones.
   * @param {string} job
   * @param {string} token the watch token `POST /jobs` returned
   * @param {WatchOptions} [options]
   * @returns {{unwatch: () => void}}
   */
  watch(job, token, options = {}) {
    const after = options.after ?? null;
    const w = {token, lastId: after, lastSeq: seqOf(after), options, source: null, retry: 0};
    this.watches.set(job, w);
    if (this.overSse(w)) this.openSse(job, w);
    else if (this.socket?.readyState === WebSocket.OPEN) this.sendWatch(job);
    else if (!this.socket && !this.timer) this.connect();
    return {unwatch: () => this.unwatch(job)};
  }

  /** @param {string} job */
  unwatch(job) {
    const w = this.watches.get(job);
    if (!w) return;
    this.watches.delete(job);
    if (w.source) w.source.close();
    else this.send({op: "unwatch", job});
  }

  /** Close the socket (and every event stream) for good (a page that is done with it). */
  close() {
    for (const w of this.watches.values()) w.source?.close();
    this.watches.clear();
    clearTimeout(this.timer);
    this.timer = 0;
    this.socket?.close(1000);
    this.setState({state: "closed", attempt: 0});
  }

  /** @private @param {StateChange} change */
  setState(change) {
    this.state = change.state;
    this.onState(change);
  }

  /** @private */
  connect() {
    this.timer = 0;
    this.setState({state: this.attempt ? "reconnecting" : "connecting", attempt: this.attempt});
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.failedOpens = 0;
      const resumed = [...this.watches].filter(([, w]) => !w.source).map(([job, w]) => ({job, after: w.lastId}));
      this.setState({state: "connected", attempt: this.attempt, resumed: this.attempt ? resumed : []});
      for (const [job, w] of this.watches) if (!w.source) this.sendWatch(job);
    };
    socket.onmessage = (message) => {
      // The backoff starts over only once the gateway answers: one that accepts and closes
      // at once (at capacity, shutting down) keeps being retried ever more slowly.
      this.attempt = 0;
      this.receive(JSON.parse(message.data));
    };
    let opened = false;
    socket.addEventListener("open", () => { opened = true; });
    socket.onclose = (close) => {
      if (!opened) this.failedOpens += 1;
      this.closed(socket, close.code);
    };
  }

  /** @private Whether a watch goes over Server-Sent Events. */
  overSse(w) {
    const transport = w.options.transport ?? "auto";
    return transport === "sse" || (transport === "auto" && this.useSse);
  }

  /** @private WebSockets keep failing: move the "auto" watches to Server-Sent Events. */
  fallBack() {
    this.useSse = true;
    for (const [job, w] of this.watches) {
      if (!w.source && this.overSse(w)) this.openSse(job, w);
    }
  }

  /** @private One job's event stream; EventSource reconnects by itself with Last-Event-ID. */
  openSse(job, w) {
    const url = new URL(`jobs/${encodeURIComponent(job)}/events`, this.root);
    url.searchParams.set("token", w.token);
    if (w.lastId) url.searchParams.set("after", w.lastId);
    const source = new EventSource(url);
    w.source = source;
    const onFrame = (message) => {
      w.retry = 0;
      this.receive(JSON.parse(message.data));
    };
    for (const kind of ["data", "done", "failed"]) source.addEventListener(kind, onFrame);
    source.addEventListener("error", (event) => {
      if (event instanceof MessageEvent && event.data) {  // an `event: error` from the gateway
        onFrame(event);
        return;
      }
      // A dropped connection EventSource retries by itself; one it gave up on (an HTTP
      // error, or 204 once the job had ended) we ask about, once, to know which.
      if (source.readyState === EventSource.CLOSED && this.watches.get(job) === w) {
        this.sseRefused(job, w, url);
      }
    });
  }

  /** @private @param {string} job @param {any} w @param {URL} url */
  async sseRefused(job, w, url) {
    w.source = null;
    if (w.lastId) url.searchParams.set("after", w.lastId);
    const abort = new AbortController();
    let reply = null;
    try {
      reply = await fetch(url, {signal: abort.signal});
    } catch {
      // the gateway is unreachable: try again below
    }
    abort.abort();  // a 200 would be a stream: we only wanted its status
    if (this.watches.get(job) !== w) return;
    if (reply && reply.status === 204) {  // nothing follows the position it asked for
      this.watches.delete(job);
      return;
    }
    if (reply && reply.status >= 400 && reply.status < 500) {
      const body = await reply.json().catch(() => ({}));
      const error = body.error ?? {code: "http_error", message: reply.statusText};
      this.watches.delete(job);
      w.options.onError?.({code: error.code, message: error.message, job, transient: false});
      return;
    }
    const ceiling = Math.min(this.maxDelayMs, 250 * 2 ** w.retry);
    w.retry += 1;
    setTimeout(() => { if (this.watches.get(job) === w) this.openSse(job, w); }, ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  /** @private @param {WebSocket} socket @param {number} code */
  closed(socket, code) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (this.state === "closed") return;
    if (FATAL_CLOSES.has(code)) {
      const error = {code: "closed", message: `the gateway closed the socket (${code})`, transient: false};
      for (const [job, w] of this.watches) {
        if (w.source) continue;  // over SSE: not this socket's
        w.options.onError?.({...error, job});
        this.watches.delete(job);
      }
      this.setState({state: "closed", attempt: 0, closeCode: code});
      return;
    }
    if (this.failedOpens >= FALLBACK_AFTER && !this.useSse) this.fallBack();
    const overWs = [...this.watches.values()].filter((w) => !w.source);
    if (!overWs.length) {  // nothing to resume: connect again on the next watch
      this.attempt = 0;
      this.setState({state: "idle", attempt: 0, closeCode: code});
      return;
    }
    // Jitter (half to all of the ceiling): many tabs dropped by one gateway do not come back
    // in step, and none comes back sooner than half the ceiling.
    const ceiling = Math.min(this.maxDelayMs, 250 * 2 ** this.attempt);
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.attempt += 1;
    this.setState({state: "reconnecting", attempt: this.attempt, delayMs, closeCode: code});
    this.timer = setTimeout(() => this.connect(), delayMs);
  }

  /** @private @param {string} job */
  sendWatch(job) {
    const w = this.watches.get(job);
    if (w) this.send({op: "watch", job, token: w.token, after: w.lastId});
  }

  /** @private @param {object} frame */
  send(frame) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  /** @private @param {any} frame */
  receive(frame) {
    const w = frame.job === undefined ? undefined : this.watches.get(frame.job);
    if (frame.type === "event") {
      if (!w || frame.seq <= w.lastSeq) return;  // not watched any more, or already delivered
      w.lastSeq = frame.seq;
      w.lastId = frame.id;
      w.options.onEvent?.(frame);
      if (frame.event !== "data") {
        this.watches.delete(frame.job);
        w.source?.close();
        w.options.onDone?.(frame);
      }
    } else if (frame.type === "error") {
      const error = {code: frame.code, message: frame.message, job: frame.job, transient: TRANSIENT.has(frame.code)};
      if (w) {
        if (!error.transient) {
          this.watches.delete(frame.job);
          w.source?.close();
        }
        w.options.onError?.(error);
      } else if (frame.job === undefined) {
        for (const other of this.watches.values()) other.options.onError?.(error);
      }
    }
  }
}

/** @type {Resultcast | null} */
let shared = null;
/** @type {string | undefined} */
let sharedBase;

/**
 * Point the page's shared client at a gateway: needed when this module is not served by the
 * gateway itself (a copy of the file, another origin). Watching works from any origin the
 * gateway's ALLOWED_ORIGINS admits; submitting from another origin needs the page's own
 * backend (the gateway sends no CORS headers, and `POST /jobs` may need an API key anyway).
 * @param {{base: string, onState?: (change: StateChange) => void}} options
 */
export function configure({base, onState}) {
  shared?.close();
  sharedBase = base;
  shared = new Resultcast(socketUrl(base), {onState});
  return shared;
}

/** The page's shared client (created on first use). */
export function client() {
  shared ??= new Resultcast(socketUrl(sharedBase));
  return shared;
}

/**
 * Watch a job over the page's shared socket.
 * @param {string} job
 * @param {string} token
 * @param {WatchOptions} [options]
 */
export function watch(job, token, options) {
  return client().watch(job, token, options);
}

/**
 * Submit a job; resolves to its id and watch token, or rejects with the gateway's error.
 * @param {string} kind
 * @param {object} payload
 * @param {{base?: string, apiKey?: string}} [options]
 * @returns {Promise<{job: string, token: string}>}
 */
export async function submit(kind, payload, {base = sharedBase ?? GATEWAY_ROOT, apiKey} = {}) {
  /** @type {Record<string, string>} */
  const headers = {"content-type": "application/json"};
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const reply = await fetch(gatewayUrl("jobs", base), {method: "POST", headers, body: JSON.stringify({kind, payload})});
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    const error = body.error ?? {code: "http_error", message: reply.statusText};
    throw Object.assign(new Error(`${reply.status} ${error.code}: ${error.message}`), {status: reply.status, ...error});
  }
  return body;
}
