// A taskbroker producer in Node: enqueues three emails and waits for each outcome.
//
//   node examples/node/producer.mjs          # TASKBROKER_ADDR, default 127.0.0.1:50051
import { Client } from "@taskbroker/client";

const client = new Client(process.env.TASKBROKER_ADDR ?? "127.0.0.1:50051");

const recipients = ["ada@example.com", "grace@example.com", "not-an-address"];
const tasks = await Promise.all(
  recipients.map((to) => client.enqueue("email.send", { to, subject: "hello" }, { queue: "emails" })),
);
for (const task of tasks) {
  const done = await client.wait(task.id, { timeoutMs: 30_000 });
  const outcome = done.state === "TASK_STATE_SUCCEEDED" ? done.resultText() : done.lastError;
  console.log(`${done.id} ${done.state} ${outcome}`);
}
client.close();
