// Typed errors, mapped in one place from a gRPC status and its
// google.rpc.Status details (the `grpc-status-details-bin` trailer, or the
// `error` of a batch item or a stream `settled`).
//
// The broker puts a google.rpc.ErrorInfo (reason, domain "taskbroker") on
// every error, google.rpc.BadRequest field violations on bad input and
// google.rpc.RetryInfo on UNAVAILABLE. These three messages are decoded here
// with a small protobuf wire reader, so no error_details.proto is needed.

import * as grpc from "@grpc/grpc-js";

/** One offending request field (google.rpc.BadRequest.FieldViolation). */
export interface FieldViolation {
  field: string;
  description: string;
}

/** What a status said, besides its code and message. */
export interface ErrorDetails {
  /** google.rpc.ErrorInfo.reason, e.g. "LEASE_MISMATCH" ("" when absent). */
  reason?: string;
  /** google.rpc.ErrorInfo.domain ("taskbroker"). */
  domain?: string;
  /** google.rpc.ErrorInfo.metadata, e.g. { task_id } or { queue }. */
  metadata?: Record<string, string>;
  fieldViolations?: FieldViolation[];
  /** google.rpc.RetryInfo.retry_delay, in milliseconds. */
  retryDelayMs?: number;
  cause?: unknown;
}

/** Every error this package raises for a failed broker call. */
export class TaskbrokerError extends Error {
  /** The gRPC status code (grpc.status). */
  readonly code: grpc.status;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];
  readonly retryDelayMs?: number;

  constructor(code: grpc.status, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.code = code;
    this.reason = details.reason ?? "";
    this.domain = details.domain ?? "";
    this.metadata = details.metadata ?? {};
    this.fieldViolations = details.fieldViolations ?? [];
    this.retryDelayMs = details.retryDelayMs;
  }

  /** The name of the gRPC code, e.g. "FAILED_PRECONDITION". */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

/** Bad input (INVALID_ARGUMENT); `fieldViolations` names each offending field. */
export class InvalidArgument extends TaskbrokerError {}
/** Unknown or already purged task id (NOT_FOUND / TASK_NOT_FOUND). */
export class TaskNotFound extends TaskbrokerError {}
/** Undeclared queue while the broker has strict_queues (NOT_FOUND / QUEUE_NOT_FOUND). */
export class QueueNotFound extends TaskbrokerError {}
/** Wrong, stale or expired lease id (FAILED_PRECONDITION / LEASE_MISMATCH). */
export class LeaseMismatch extends TaskbrokerError {}
/** The task was canceled while held (FAILED_PRECONDITION / TASK_CANCELED). */
export class TaskCanceled extends TaskbrokerError {}
/** Cancel of a task that already succeeded or died (FAILED_PRECONDITION / TASK_FINISHED). */
export class TaskFinished extends TaskbrokerError {}
/** The broker or its storage cannot serve now; retried automatically where safe. */
export class Unavailable extends TaskbrokerError {}
/** Storage full or another limit (RESOURCE_EXHAUSTED). */
export class ResourceExhausted extends TaskbrokerError {}
export class PermissionDenied extends TaskbrokerError {}
export class Unauthenticated extends TaskbrokerError {}
/** A deadline passed: a call's, or `wait`'s timeout. */
export class DeadlineExceeded extends TaskbrokerError {}

type ErrorClass = new (code: grpc.status, message: string, details?: ErrorDetails) => TaskbrokerError;

const BY_REASON: Record<string, ErrorClass> = {
  INVALID_ARGUMENT: InvalidArgument,
  TASK_NOT_FOUND: TaskNotFound,
  QUEUE_NOT_FOUND: QueueNotFound,
  LEASE_MISMATCH: LeaseMismatch,
  TASK_CANCELED: TaskCanceled,
  TASK_FINISHED: TaskFinished,
  STORAGE_UNAVAILABLE: Unavailable,
  STORAGE_FULL: ResourceExhausted,
};

const BY_CODE: Partial<Record<grpc.status, ErrorClass>> = {
  [grpc.status.INVALID_ARGUMENT]: InvalidArgument,
  [grpc.status.UNAVAILABLE]: Unavailable,
  [grpc.status.RESOURCE_EXHAUSTED]: ResourceExhausted,
  [grpc.status.PERMISSION_DENIED]: PermissionDenied,
  [grpc.status.UNAUTHENTICATED]: Unauthenticated,
  [grpc.status.DEADLINE_EXCEEDED]: DeadlineExceeded,
};

/** The typed error for a status code, message and details. */
export function makeError(code: grpc.status, message: string, details: ErrorDetails = {}): TaskbrokerError {
  const cls = (details.reason && BY_REASON[details.reason]) || BY_CODE[code] || TaskbrokerError;
  return new cls(code, message, details);
}

/** The typed error for a failed call (grpc-js ServiceError); other values pass through. */
export function fromServiceError(err: unknown): unknown {
  if (err instanceof TaskbrokerError) return err;
  const e = err as Partial<grpc.ServiceError>;
  if (!e || typeof e.code !== "number") return err;
  let details: ErrorDetails = {};
  const raw = e.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw.length > 0 && Buffer.isBuffer(raw[0])) {
    try {
      details = decodeDetails(decodeStatus(raw[0]).details ?? []);
    } catch {
      // Undecodable details: the code and message still say what happened.
    }
  }
  return makeError(e.code, e.details || e.message || grpc.status[e.code], { ...details, cause: err });
}

/** A google.protobuf.Any as proto-loader gives it (or as decoded here). */
export interface AnyMessage {
  typeUrl?: string;
  /** protobufjs spells it this way even with camelCase fields. */
  type_url?: string;
  value: Buffer | Uint8Array;
}

/** A google.rpc.Status message as proto-loader gives it. */
export interface RpcStatus {
  code: number;
  message: string;
  details?: AnyMessage[];
}

/** The typed error for a google.rpc.Status message (batch items, stream settlements). */
export function fromRpcStatus(st: RpcStatus): TaskbrokerError {
  let details: ErrorDetails = {};
  try {
    details = decodeDetails(st.details ?? []);
  } catch {
    // As above: keep the code and message.
  }
  return makeError(st.code, st.message, details);
}

function decodeDetails(anys: AnyMessage[]): ErrorDetails {
  const out: ErrorDetails = {};
  for (const any of anys) {
    const value = Buffer.from(any.value);
    const url = any.typeUrl ?? any.type_url ?? "";
    switch (url.slice(url.lastIndexOf("/") + 1)) {
      case "google.rpc.ErrorInfo": {
        // ErrorInfo { reason = 1; domain = 2; map<string,string> metadata = 3 }
        out.metadata = {};
        for (const f of readFields(value)) {
          if (f.no === 1) out.reason = text(f.value);
          else if (f.no === 2) out.domain = text(f.value);
          else if (f.no === 3) {
            let key = "";
            let val = "";
            for (const g of readFields(bytes(f.value))) {
              if (g.no === 1) key = text(g.value);
              else if (g.no === 2) val = text(g.value);
            }
            out.metadata[key] = val;
          }
        }
        break;
      }
      case "google.rpc.BadRequest": {
        // BadRequest { repeated FieldViolation field_violations = 1 }
        // FieldViolation { field = 1; description = 2 }
        out.fieldViolations = [];
        for (const f of readFields(value)) {
          if (f.no !== 1) continue;
          const v: FieldViolation = { field: "", description: "" };
          for (const g of readFields(bytes(f.value))) {
            if (g.no === 1) v.field = text(g.value);
            else if (g.no === 2) v.description = text(g.value);
          }
          out.fieldViolations.push(v);
        }
        break;
      }
      case "google.rpc.RetryInfo": {
        // RetryInfo { google.protobuf.Duration retry_delay = 1 } Duration { seconds = 1; nanos = 2 }
        for (const f of readFields(value)) {
          if (f.no !== 1) continue;
          let ms = 0;
          for (const g of readFields(bytes(f.value))) {
            if (g.no === 1) ms += Number(g.value) * 1000;
            else if (g.no === 2) ms += Number(g.value) / 1e6;
          }
          out.retryDelayMs = ms;
        }
        break;
      }
    }
  }
  return out;
}

/** google.rpc.Status { int32 code = 1; string message = 2; repeated Any details = 3 } */
function decodeStatus(buf: Buffer): RpcStatus {
  const st: RpcStatus = { code: 0, message: "", details: [] };
  for (const f of readFields(buf)) {
    if (f.no === 1) st.code = Number(BigInt.asIntN(32, f.value as bigint));
    else if (f.no === 2) st.message = text(f.value);
    else if (f.no === 3) {
      // Any { string type_url = 1; bytes value = 2 }
      const any: AnyMessage = { typeUrl: "", value: Buffer.alloc(0) };
      for (const g of readFields(bytes(f.value))) {
        if (g.no === 1) any.typeUrl = text(g.value);
        else if (g.no === 2) any.value = bytes(g.value);
      }
      st.details!.push(any);
    }
  }
  return st;
}

interface WireField {
  no: number;
  value: bigint | Buffer;
}

function bytes(v: bigint | Buffer): Buffer {
  if (typeof v === "bigint") throw new Error("expected a length-delimited protobuf field");
  return v;
}

function text(v: bigint | Buffer): string {
  return bytes(v).toString("utf8");
}

/** The fields of one protobuf message: varints and length-delimited values (others skipped). */
function readFields(buf: Buffer): WireField[] {
  const fields: WireField[] = [];
  let i = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= buf.length) throw new Error("truncated protobuf varint");
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(varint());
    const no = key >>> 3;
    const wire = key & 7;
    if (wire === 0) fields.push({ no, value: varint() });
    else if (wire === 2) {
      const len = Number(varint());
      if (i + len > buf.length) throw new Error("truncated protobuf field");
      fields.push({ no, value: buf.subarray(i, i + len) });
      i += len;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new Error(`unexpected protobuf wire type ${wire}`);
  }
  return fields;
}
