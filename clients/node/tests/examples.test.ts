// examples/node end to end: worker.mjs and producer.mjs as separate
// processes against a real broker, importing "@taskbroker/client" by name.

import { describe, it } from "node:test";
import * as assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Output, REPO_ROOT, SECURE, startBroker, within } from "./broker";

const EXAMPLES = path.join(REPO_ROOT, "examples", "node");
const PACKAGE_ROOT = path.resolve(__dirname, "..", "..");

/** What `npm install --prefix examples/node` does for the file: dependency: a link to this package. */
function linkPackage(): void {
  const link = path.join(EXAMPLES, "node_modules", "@taskbroker", "client");
  if (fs.existsSync(path.join(link, "package.json"))) return;
  fs.mkdirSync(path.dirname(link), { recursive: true });
  fs.rmSync(link, { force: true });
  fs.symlinkSync(path.relative(path.dirname(link), PACKAGE_ROOT), link, "dir");
}

const skip = SECURE && "plain pass only: examples/node/*.mjs take only TASKBROKER_ADDR (no CA or token options)";

describe("examples/node", () => {
  it("producer.mjs and worker.mjs run end to end", { skip }, async () => {
    linkPackage();
    const broker = await startBroker();
    const env = { ...process.env, TASKBROKER_ADDR: broker.addr };
    const worker = spawn(process.execPath, [path.join(EXAMPLES, "worker.mjs")], { env, cwd: EXAMPLES });
    const workerExit = new Promise<number | null>((resolve) => worker.on("exit", resolve));
    const workerOut = new Output(worker.stdout, worker.stderr);
    try {
      await workerOut.waitFor(/worker: running/, 15_000);
      const producer = spawn(process.execPath, [path.join(EXAMPLES, "producer.mjs")], { env, cwd: EXAMPLES });
      const producerOut = new Output(producer.stdout, producer.stderr);
      const code = await within(
        new Promise<number | null>((resolve) => producer.on("exit", resolve)),
        30_000,
        "producer.mjs to finish",
      );
      assert.equal(code, 0, producerOut.text);
      const lines = producerOut.text.trim().split("\n");
      assert.equal(lines.length, 3, producerOut.text);
      assert.match(lines[0], /^[0-9A-Z]{26} TASK_STATE_SUCCEEDED \{"sent":true,"to":"ada@example.com"\}$/);
      assert.match(lines[1], /^[0-9A-Z]{26} TASK_STATE_SUCCEEDED \{"sent":true,"to":"grace@example.com"\}$/);
      assert.match(lines[2], /^[0-9A-Z]{26} TASK_STATE_DEAD not an email address: not-an-address$/);
      assert.match(workerOut.text, /sending "hello" to ada@example.com \(attempt 1\)/);

      worker.kill("SIGTERM");
      assert.equal(await within(workerExit, 15_000, "worker.mjs to exit after SIGTERM"), 0, workerOut.text);
      assert.match(workerOut.text, /worker: stopped/);
    } finally {
      if (worker.exitCode === null) worker.kill("SIGKILL");
      await broker.stop();
    }
  });
});
