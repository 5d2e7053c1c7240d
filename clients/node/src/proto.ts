// Loads the taskbroker API from its .proto files at run time
// (@grpc/proto-loader), once per proto directory.
//
// The package carries a copy of the repository's proto/ in ./proto (made by
// `npm run build`); inside a checkout the repository's own proto/ is the
// fallback. `protoDir` (or TASKBROKER_PROTO_DIR) points elsewhere.
// google/protobuf/*.proto come from protobufjs's bundled common types.

import * as fs from "node:fs";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PROTO_FILES = ["taskbroker/v1/producer.proto", "taskbroker/v1/worker.proto"];

/** How messages look in JavaScript: camelCase fields, enum names as strings. */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  // A virtual field names the member of each oneof that is set (`msg: "task"`).
  oneofs: true,
};

/** A generated service client: the methods are looked up by name. */
export type ServiceClient = grpc.Client & Record<string, any>;
type ServiceClientCtor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions,
) => ServiceClient;

/** The loaded API. */
export interface Api {
  ProducerService: ServiceClientCtor;
  WorkerService: ServiceClientCtor;
  /** Field names of EnqueueRequest (camelCase), to tell what this proto supports. */
  enqueueFields: ReadonlySet<string>;
  protoDir: string;
}

const loaded = new Map<string, Api>();

/** The first directory that holds the taskbroker protos. */
export function findProtoDir(explicit?: string): string {
  const pkgRoot = path.resolve(__dirname, "..", "..");
  const candidates = explicit
    ? [explicit]
    : [
        process.env.TASKBROKER_PROTO_DIR,
        path.join(pkgRoot, "proto"),
        path.resolve(pkgRoot, "..", "..", "proto"),
      ].filter((d): d is string => !!d);
  for (const dir of candidates) {
    if (fs.existsSync(path.join(dir, PROTO_FILES[0]))) return dir;
  }
  throw new Error(
    `taskbroker protos not found (looked in ${candidates.join(", ")}); ` +
      "run `npm run build` in clients/node, or pass protoDir / set TASKBROKER_PROTO_DIR",
  );
}

/** The API from `protoDir` (default: see findProtoDir), loaded once. */
export function loadApi(protoDir?: string): Api {
  const dir = findProtoDir(protoDir);
  const cached = loaded.get(dir);
  if (cached) return cached;
  const def = protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [dir] });
  const pkg = (grpc.loadPackageDefinition(def) as any).taskbroker.v1;
  const enqueueDef = def["taskbroker.v1.EnqueueRequest"] as protoLoader.MessageTypeDefinition<unknown, unknown>;
  const enqueueType = enqueueDef.type as { field: { name: string }[] };
  const api: Api = {
    ProducerService: pkg.ProducerService,
    WorkerService: pkg.WorkerService,
    enqueueFields: new Set(enqueueType.field.map((f) => f.name)),
    protoDir: dir,
  };
  loaded.set(dir, api);
  return api;
}

/** A google.protobuf.Duration for `ms` milliseconds. */
export function duration(ms: number): { seconds: number; nanos: number } {
  const whole = Math.max(0, Math.round(ms));
  return { seconds: Math.floor(whole / 1000), nanos: (whole % 1000) * 1_000_000 };
}

/** A google.protobuf.Timestamp for a Date or epoch milliseconds. */
export function timestamp(at: Date | number): { seconds: number; nanos: number } {
  const ms = typeof at === "number" ? at : at.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1_000_000) };
}

/** A Date from a google.protobuf.Timestamp (null when unset). */
export function toDate(ts: { seconds?: number | string; nanos?: number } | null | undefined): Date | null {
  if (!ts) return null;
  return new Date(Number(ts.seconds ?? 0) * 1000 + Math.floor((ts.nanos ?? 0) / 1_000_000));
}
