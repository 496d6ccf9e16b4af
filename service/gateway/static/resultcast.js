// resultcast browser client: watch job results over one shared WebSocket per page.
//
//   import {watch, submit} from "/static/resultcast.js";
//   const {job, token} = await submit("count", {n: 5});
//   watch(job, token, {onEvent: (e) => console.log(e.seq, e.data), onDone: (e) => ..., onError: (err) => ...});
//
// Guarantees it keeps for you: every event once, in `seq` order. When the socket drops (a
// gateway restarting, a network blip) it reconnects with jittered backoff and watches again
// from the last `id` it delivered, dropping anything it already delivered. No dependencies.

/**
 * @typedef {{type: "event", job: string, id: string, seq: number,
 *            event: "data" | "done" | "failed", data: any, ts: number}} ResultEvent
 * @typedef {{code: string, message: string, job?: string, transient: boolean}} ResultError
 *   `transient` errors (busy, capacity, unavailable) need nothing from you: the watch goes on
 *   and every event still arrives. Any other error ends the watch.
 * @typedef {{after?: string | null,
 *            onEvent?: (event: ResultEvent) => void,
 *            onDone?: (event: ResultEvent) => void,
 *            onError?: (error: ResultError) => void}} WatchOptions
 * @typedef {"idle" | "connecting" | "connected" | "reconnecting" | "closed"} SocketState
 * @typedef {{state: SocketState, attempt: number, delayMs?: number, closeCode?: number,
 *            resumed?: Array<{job: string, after: string | null}>}} StateChange
 */

const TRANSIENT = new Set(["busy", "capacity", "unavailable"]);
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
    /** @type {Map<string, {token: string, lastId: string | null, lastSeq: number, options: WatchOptions}>} */
    this.watches = new Map();
    /** @type {WebSocket | null} */
    this.socket = null;
    this.attempt = 0;
    /** @type {SocketState} */
    this.state = "idle";
    this.timer = 0;
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
    this.watches.set(job, {token, lastId: after, lastSeq: seqOf(after), options});
    if (this.socket?.readyState === WebSocket.OPEN) this.sendWatch(job);
    else if (!this.socket && !this.timer) this.connect();
    return {unwatch: () => this.unwatch(job)};
  }

  /** @param {string} job */
  unwatch(job) {
    if (this.watches.delete(job)) this.send({op: "unwatch", job});
  }

  /** Close the socket for good (a page that is done with it). */
  close() {
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
      const resumed = [...this.watches].map(([job, w]) => ({job, after: w.lastId}));
      this.setState({state: "connected", attempt: this.attempt, resumed: this.attempt ? resumed : []});
      for (const job of this.watches.keys()) this.sendWatch(job);
    };
    socket.onmessage = (message) => {
      // The backoff starts over only once the gateway answers: one that accepts and closes
      // at once (at capacity, shutting down) keeps being retried ever more slowly.
      this.attempt = 0;
      this.receive(JSON.parse(message.data));
    };
    socket.onclose = (close) => this.closed(socket, close.code);
  }

  /** @private @param {WebSocket} socket @param {number} code */
  closed(socket, code) {
    if (socket !== this.socket) return;
    this.socket = null;
    if (this.state === "closed") return;
    if (FATAL_CLOSES.has(code)) {
      const error = {code: "closed", message: `the gateway closed the socket (${code})`, transient: false};
      for (const [job, w] of this.watches) w.options.onError?.({...error, job});
      this.watches.clear();
      this.setState({state: "closed", attempt: 0, closeCode: code});
      return;
    }
    if (!this.watches.size) {  // nothing to resume: connect again on the next watch
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
        w.options.onDone?.(frame);
      }
    } else if (frame.type === "error") {
      const error = {code: frame.code, message: frame.message, job: frame.job, transient: TRANSIENT.has(frame.code)};
      if (w) {
        if (!error.transient) this.watches.delete(frame.job);
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
