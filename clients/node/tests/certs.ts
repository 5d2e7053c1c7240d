// Test certificates from the openssl CLI: a throwaway CA, a server
// certificate for localhost and 127.0.0.1 and a client certificate, as files.

import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

/** Paths of the PEM files makeCerts wrote. */
export interface Certs {
  ca: string;
  serverKey: string;
  serverCert: string;
  clientKey: string;
  clientCert: string;
}

/** Writes a CA, a server and a client certificate into `dir`. */
export function makeCerts(dir: string): Certs {
  const run = (...args: string[]) => {
    try {
      execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
      if (err.code === "ENOENT") throw new Error("openssl not found: install it with `apt-get install openssl`");
      throw new Error(`openssl ${args.join(" ")} failed: ${err.stderr?.toString() ?? err.message}`);
    }
  };
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  run("req", "-x509", ...key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=taskbroker test CA");
  for (const [name, ext] of [
    ["server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"],
    ["client", "extendedKeyUsage=clientAuth\n"],
  ]) {
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
    run("req", ...key, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    const sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"];
    run("x509", "-req", "-in", `${name}.csr`, ...sign, "-out", `${name}.pem`, "-extfile", `${name}.ext`);
  }
  const f = (n: string) => path.join(dir, n);
  return {
    ca: f("ca.pem"),
    serverKey: f("server.key"),
    serverCert: f("server.pem"),
    clientKey: f("client.key"),
    clientCert: f("client.pem"),
  };
}
