// A taskbroker worker in Node: handles "email.send" tasks from the "emails" queue.
//
//   node examples/node/worker.mjs            # TASKBROKER_ADDR, default 127.0.0.1:50051
//
// Runs until SIGTERM or Ctrl-C, then finishes the tasks it holds and exits.
import { Worker, NoRetry } from "@taskbroker/client";

const worker = new Worker(process.env.TASKBROKER_ADDR ?? "127.0.0.1:50051", { queues: ["emails"], concurrency: 8 });

worker.task("email.send", async (job, signal) => {
  const { to, subject } = job.json();
  if (!to.includes("@")) throw new NoRetry(`not an email address: ${to}`); // DEAD at once, no retries
  signal.throwIfAborted(); // the lease was lost (task canceled or expired): stop working on it
  console.log(`worker: sending "${subject}" to ${to} (attempt ${job.attempt})`);
  return { sent: true, to }; // stored as the task's result (JSON)
});

console.log("worker: running");
await worker.run();
console.log("worker: stopped");
