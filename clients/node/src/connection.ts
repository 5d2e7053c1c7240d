// What Client and Worker share: the target, TLS credentials, the bearer
// token, channel options and retry backoff.

import * as fs from "node:fs";
import * as grpc from "@grpc/grpc-js";

/** TLS settings. Each of ca/cert/key is PEM text, a Buffer, or a path to a PEM file. */
export interface TlsOptions {
  /** Root certificate(s) to trust; default: the system's roots. */
  ca?: Buffer | string;
  /** Client certificate chain, for mutual TLS (with `key`). */
  cert?: Buffer | string;
  /** Client private key, for mutual TLS (with `cert`). */
  key?: Buffer | string;
  /** The name to check the server's certificate against, when it differs from the target's host. */
  serverName?: string;
}

/** Options that Client and Worker share. */
export interface ConnectionOptions {
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** `true` for TLS with the system's roots, or TLS settings. A target starting with https:// implies `true`. */
  tls?: boolean | TlsOptions;
  /** Where the .proto files are; default: the package's copy (see README). */
  protoDir?: string;
  /** Extra @grpc/grpc-js channel options, merged over the defaults. */
  channelOptions?: grpc.ChannelOptions;
}

/** The broker's default message limit (max_message_bytes, 64 MiB). */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

const DEFAULT_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
  // Notice a restarted broker within seconds, not grpc-js's default 2 minutes.
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2_000,
};

/** A resolved connection: what to pass to a generated client's constructor. */
export interface Connection {
  address: string;
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
  /** Fresh metadata for one call (carries the token). */
  metadata(): grpc.Metadata;
}

function pem(value: Buffer | string | undefined, what: string): Buffer | null {
  if (value === undefined) return null;
  if (Buffer.isBuffer(value)) return value;
  if (value.includes("-----BEGIN")) return Buffer.from(value, "utf8");
  try {
    return fs.readFileSync(value);
  } catch (e) {
    throw new Error(`tls.${what}: not PEM text and not a readable file: ${value} (${(e as Error).message})`);
  }
}

/** Resolves a target ("host:port", "http://host:port", "https://host:port") and options. */
export function connect(target: string, opts: ConnectionOptions): Connection {
  if (typeof target !== "string" || target === "") throw new TypeError("target must be a non-empty string");
  let address = target;
  let tls = opts.tls;
  const scheme = /^([a-z]+):\/\//i.exec(target);
  if (scheme) {
    address = target.slice(scheme[0].length).replace(/\/+$/, "");
    if (scheme[1].toLowerCase() === "https" && tls === undefined) tls = true;
  }
  const channelOptions: grpc.ChannelOptions = { ...DEFAULT_CHANNEL_OPTIONS };
  let credentials: grpc.ChannelCredentials;
  if (tls) {
    const t: TlsOptions = tls === true ? {} : tls;
    if (!!t.cert !== !!t.key) throw new Error("tls.cert and tls.key go together (mutual TLS)");
    credentials = grpc.credentials.createSsl(pem(t.ca, "ca"), pem(t.key, "key"), pem(t.cert, "cert"));
    if (t.serverName) channelOptions["grpc.ssl_target_name_override"] = t.serverName;
  } else {
    credentials = grpc.credentials.createInsecure();
  }
  Object.assign(channelOptions, opts.channelOptions ?? {});
  const token = opts.token;
  return {
    address,
    credentials,
    channelOptions,
    metadata() {
      const md = new grpc.Metadata();
      if (token) md.set("authorization", `Bearer ${token}`);
      return md;
    },
  };
}

/** Exponential backoff with jitter. */
export interface BackoffOptions {
  /** First delay (default 100 ms). */
  initialMs?: number;
  /** Largest delay (default 5 s). */
  maxMs?: number;
}

/** The delay before retry number `n` (0-based): initial * 2^n, capped, with ±20% jitter. */
export function backoffDelay(n: number, opts: BackoffOptions = {}): number {
  const initial = opts.initialMs ?? 100;
  const max = opts.maxMs ?? 5_000;
  const base = Math.min(max, initial * 2 ** Math.min(n, 30));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
