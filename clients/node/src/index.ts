// @taskbroker/client: producer (Client) and worker (Worker) for taskbroker.
//
//   import { Client, Worker, Retry, NoRetry } from "@taskbroker/client";

export { Client, EnqueueManyError } from "./client";
export type { ClientOptions, EnqueueItem, EnqueueOptions, RetryOptions, WaitOptions } from "./client";
export { Worker } from "./worker";
export type { Handler, Logger, WorkerOptions } from "./worker";
export { Job, LeaseLost, NoRetry, Retry } from "./job";
export { Task, TaskState, isFinal } from "./task";
export type { Payload, TaskStateName } from "./task";
export type { BackoffOptions, ConnectionOptions, TlsOptions } from "./connection";
export {
  DeadlineExceeded,
  InvalidArgument,
  LeaseMismatch,
  PermissionDenied,
  QueueNotFound,
  ResourceExhausted,
  TaskCanceled,
  TaskFinished,
  TaskNotFound,
  TaskbrokerError,
  Unauthenticated,
  Unavailable,
} from "./errors";
export type { FieldViolation } from "./errors";
