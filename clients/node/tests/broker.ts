// Test helpers: a real `taskbroker serve` on 127.0.0.1 (the binary from
// TASKBROKER_BIN, else the repository's target/debug/taskbroker), read its
// address from the `listening on ADDR` line, and small awaitable signals.
//
// TASKBROKER_TEST_SECURE=1 is the secure pass: every broker serves TLS with a
// certificate from a test CA (made once per test file) and has auth on with
// one token, and every client connects with `broker.conn` (that CA and token;
// empty in the plain pass). scripts/test runs the suite once each way.

import { ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ConnectionOptions } from "../src/index";
import { Certs, makeCerts } from "./certs";

/** The repository root, from dist/tests/. */
export const REPO_ROOT = path.resolve(__dirname, "..", "..", "..", "..");

/** How long a broker may take to print its address. */
const START_TIMEOUT_MS = 30_000;
/** How long a stopped broker may take to exit before it is killed. */
const STOP_TIMEOUT_MS = 15_000;

export function brokerBin(): string {
  const bin = process.env.TASKBROKER_BIN || path.join(REPO_ROOT, "target", "debug", "taskbroker");
  if (!fs.existsSync(bin)) {
    throw new Error(
      `taskbroker binary not found at ${bin}: build it with \`cargo build\` in ${REPO_ROOT} ` +
        "or point TASKBROKER_BIN at one",
    );
  }
  return bin;
}

function securePass(): boolean {
  const value = process.env.TASKBROKER_TEST_SECURE ?? "";
  if (!["", "0", "1"].includes(value)) {
    throw new Error(`TASKBROKER_TEST_SECURE must be 1 (secure pass), 0 or unset, not ${JSON.stringify(value)}`);
  }
  return value === "1";
}

/** True in the secure pass (TASKBROKER_TEST_SECURE=1): TLS and auth on every broker. */
export const SECURE = securePass();

/** An `[[auth.principals]]` entry; `grants` is the TOML of its grants array. */
export interface Principal {
  name: string;
  token: string;
  grants: string;
}

function principalToml(p: Principal): string {
  const digest = createHash("sha256").update(p.token).digest("hex");
  return `[[auth.principals]]\nname = "${p.name}"\ntoken_sha256 = "${digest}"\ngrants = ${p.grants}\n`;
}

/** A random bearer token. */
export function newToken(): string {
  return randomBytes(32).toString("hex");
}

/** The secure pass's certificates and the suite's principal (may do everything everywhere). */
interface Security {
  certs: Certs;
  tests: Principal;
}

let security: Security | undefined;

/** The secure pass's certificates and token, made on first use; undefined in the plain pass. */
function secure(): Security | undefined {
  if (!SECURE) return undefined;
  security ??= {
    certs: makeCerts(tempDir("certs")),
    tests: {
      name: "tests",
      token: newToken(),
      grants: '[{ actions = ["enqueue", "consume", "inspect", "admin"], queues = ["*"] }]',
    },
  };
  return security;
}

export interface BrokerOptions {
  /** "memory" (default) or "embedded" (needs dataDir). */
  storage?: "memory" | "embedded";
  dataDir?: string;
  /** Default 127.0.0.1:0. */
  listen?: string;
  /** Config file contents (TOML), written to a temp file and passed with --config. */
  config?: string;
  /** Principals besides the suite's own (secure pass only: the plain pass has auth off). */
  principals?: Principal[];
}

export interface Broker {
  /** host:port it serves on. */
  addr: string;
  port: number;
  /** Client and Worker options: the test CA and the suite's token in the secure pass, else none. */
  conn: ConnectionOptions;
  /** The same as command-line arguments for a test's client script (`--ca PEM --token TOKEN`). */
  scriptArgs: string[];
  proc: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  /** Sends `signal` (default SIGTERM) and resolves with the exit code once it exited (kills it after 15 s). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

/** Creates a temp directory removed at exit. */
export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tb-node-${prefix}-`));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Starts a broker and resolves once it serves. */
export async function startBroker(opts: BrokerOptions = {}): Promise<Broker> {
  const args = ["serve", "--storage", opts.storage ?? "memory", "--listen", opts.listen ?? "127.0.0.1:0"];
  if (opts.dataDir) args.push("--data-dir", opts.dataDir);
  else if ((opts.storage ?? "memory") === "embedded") args.push("--data-dir", tempDir("data"));
  const sec = secure();
  let config = opts.config;
  if (sec) {
    // Top-level keys before the test's tables, [auth] after them.
    config =
      `tls_cert = "${sec.certs.serverCert}"\ntls_key = "${sec.certs.serverKey}"\n${config ?? ""}\n` +
      "[auth]\nenabled = true\n" +
      [sec.tests, ...(opts.principals ?? [])].map(principalToml).join("");
  } else if (opts.principals?.length) {
    throw new Error("principals need the secure pass (a broker with auth on)");
  }
  if (config !== undefined) {
    const file = path.join(tempDir("config"), "taskbroker.toml");
    fs.writeFileSync(file, config);
    args.push("--config", file);
  }
  const proc = spawn(brokerBin(), args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  live.add(proc);
  const exited = new Promise<number | null>((resolve) =>
    proc.on("exit", (code) => {
      live.delete(proc);
      resolve(code);
    }),
  );
  let out = "";
  const addr = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`taskbroker did not print "listening on" within ${START_TIMEOUT_MS} ms:\n${out}`));
    }, START_TIMEOUT_MS);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`taskbroker exited with code ${code} before serving: ${args.join(" ")}\n${out}`));
    });
  });
  return {
    addr,
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    // serverName: by name, so that Node does not warn about an IP address as the TLS server name.
    conn: sec ? { token: sec.tests.token, tls: { ca: sec.certs.ca, serverName: "localhost" } } : {},
    scriptArgs: sec ? ["--ca", sec.certs.ca, "--token", sec.tests.token] : [],
    proc,
    output: () => out,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A promise with its resolve function outside: a signal one side gives and the other awaits. */
export class Signal<T = void> {
  readonly promise: Promise<T>;
  resolve!: (value: T) => void;
  fired = false;

  constructor() {
    this.promise = new Promise<T>((resolve) => {
      this.resolve = (v: T) => {
        this.fired = true;
        resolve(v);
      };
    });
  }
}

/** `promise`, or a rejection naming `what` after `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A queue name no other test uses. */
export function uniqueQueue(prefix: string): string {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Collects a child's output and lets a test await a line matching a pattern. */
export class Output {
  text = "";
  private waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];

  constructor(...streams: NodeJS.ReadableStream[]) {
    for (const s of streams) {
      s.on("data", (chunk: Buffer) => {
        this.text += chunk.toString();
        this.waiters = this.waiters.filter((w) => {
          const m = w.re.exec(this.text);
          if (m) w.resolve(m);
          return !m;
        });
      });
    }
  }

  /** The first match of `re` in the output so far or to come, within `ms`. */
  waitFor(re: RegExp, ms: number): Promise<RegExpExecArray> {
    const m = re.exec(this.text);
    if (m) return Promise.resolve(m);
    const found = new Promise<RegExpExecArray>((resolve) => this.waiters.push({ re, resolve }));
    return within(found, ms, `output matching ${re} (output so far:\n${this.text})`);
  }
}
