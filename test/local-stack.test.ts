// The two ways the local stack serves the worker:
// - TLS=1: https straight from workerd with a self-signed certificate, as the edge serves it. Container clients
//   pull over TLS with verification off, and plain http to that port is refused.
// - the default: plain http through a TCP front (scripts/plain-http-front.ts) that answers TLS hellos with an HTTP
//   400 so clients fall back to http, and passes everything else through whole.
// And either way, nothing is left running when the process that started the stack is killed.
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PROJECT_ROOT } from "../scripts/local-stack.ts";
import { startPlainHttpFront, type PlainHttpFront } from "../scripts/plain-http-front.ts";
import {
  pullAndUnpack,
  run,
  runAllowingFailure,
  runInRootfs,
  startTestStack,
  type TestStack,
} from "./support/stack.ts";

const hasDocker = spawnSync("sh", ["-c", "command -v docker"], { stdio: "ignore" }).status === 0;
const hasSetpriv = (spawnSync("setpriv", ["--help"], { encoding: "utf8" }).stdout ?? "").includes("--pdeathsig");

/** A GET over https that accepts the stack's self-signed certificate, as `curl -k` does. */
function insecureGet(
  url: string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    https
      .get(url, { rejectUnauthorized: false }, (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (body += chunk));
        response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body }));
      })
      .on("error", reject);
  });
}

describe("TLS=1: https from workerd", () => {
  let stack: TestStack;

  beforeAll(async () => {
    stack = await startTestStack({ tls: true });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it("serves the registry API over https", async () => {
    expect(stack.registryUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const base = await insecureGet(`${stack.registryUrl}/v2/`);
    expect(base.status).toBe(200);
    expect(base.headers["docker-distribution-api-version"]).toBe("registry/2.0");

    const missing = await insecureGet(`${stack.registryUrl}/v2/no-such-package/manifests/latest`);
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body)).toMatchObject({ errors: [{ code: "MANIFEST_UNKNOWN" }] });
  });

  it("builds hello on a pull with skopeo over TLS, and the image runs", async () => {
    const rootfs = await pullAndUnpack(stack.registryHost, "hello:latest", await mkdtemp(join(stack.scratch, "pull-")));
    expect((await runInRootfs(rootfs, ["hello"])).stdout).toBe("Hello, world!\n");
  });

  it("is read by `docker manifest inspect --insecure` over TLS", async (context) => {
    if (!hasDocker) context.skip();
    const config = await mkdtemp(join(stack.scratch, "docker-config-"));
    const { stdout } = await run("env", [
      `DOCKER_CONFIG=${config}`,
      "docker",
      "manifest",
      "inspect",
      "--insecure",
      `${stack.registryHost}/hello`,
    ]);
    expect((JSON.parse(stdout) as { layers: unknown[] }).layers.length).toBeGreaterThan(0);
  });

  it("refuses a client that insists on TLS verification, saying why", async () => {
    const result = await runAllowingFailure("skopeo", ["inspect", `docker://${stack.registryHost}/hello:latest`]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/certificate/i);
  });
});

describe("the plain-http front", () => {
  let upstream: net.Server;
  let front: PlainHttpFront;
  const BODY_BYTES = 24 * 1024 * 1024;

  beforeAll(async () => {
    // An upstream that, like workerd answering "Connection: close", writes a large answer and closes at once.
    const body = Buffer.alloc(BODY_BYTES, 0x61);
    upstream = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.once("data", () => {
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${BODY_BYTES}\r\nConnection: close\r\n\r\n`);
        socket.end(body);
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, "127.0.0.1", resolve));
    front = await startPlainHttpFront(
      { host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port },
      { host: "127.0.0.1", port: 0 },
    );
  });

  afterAll(async () => {
    await front?.close();
    upstream?.close();
  });

  /** Sends raw bytes to the front and returns everything that comes back before it closes. */
  function exchange(request: Buffer | string, options: { halfClose: boolean; readAfterMs: number }): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = net.connect({ port: front.port, host: "127.0.0.1", allowHalfOpen: true }, () => {
        if (options.halfClose) socket.end(request);
        else socket.write(request);
        // A slow reader: nothing is read for a while, so the answer backs up in the front.
        socket.pause();
        setTimeout(() => socket.resume(), options.readAfterMs);
      });
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("end", () => socket.end());
      socket.on("close", () => resolve(Buffer.concat(chunks)));
      socket.on("error", reject);
    });
  }

  it("answers a TLS hello with a plain HTTP 400, so clients fall back to http", async () => {
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]);
    const answer = (await exchange(hello, { halfClose: false, readAfterMs: 0 })).toString("latin1");
    expect(answer.startsWith("HTTP/1.1 400 ")).toBe(true);
  });

  it.each([
    { halfClose: false, readAfterMs: 300 },
    { halfClose: true, readAfterMs: 300 },
  ])("passes a whole answer to a slow client (client half-closes after its request: $halfClose)", async (options) => {
    const answer = await exchange("GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n", options);
    const headerEnd = answer.indexOf("\r\n\r\n");
    expect(answer.subarray(0, headerEnd).toString("latin1")).toContain("200 OK");
    expect(answer.length - headerEnd - 4).toBe(BODY_BYTES);
  });
});

describe("a stack whose process is killed outright (SIGKILL)", () => {
  /** The processes whose parent is `pid`, with their command names, from /proc. */
  const childrenOf = (pid: number): { pid: number; name: string }[] =>
    readdirSync("/proc")
      .filter((entry) => /^\d+$/.test(entry))
      .flatMap((entry) => {
        try {
          const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
          // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
          const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
          const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
          return ppid === pid ? [{ pid: Number(entry), name }] : [];
        } catch {
          return []; // gone meanwhile
        }
      });

  /** Whether a process still exists. */
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  // workerd dies with the stack only through setpriv's parent-death signal (scripts/workerd-process.ts).
  it.skipIf(!hasSetpriv)(
    hasSetpriv ? "leaves neither workerd nor the builder running" : "(skipped: no setpriv --pdeathsig here)",
    async () => {
      const scratch = await mkdtemp(join(tmpdir(), "killed-stack-"));
      // node itself, not the tsx wrapper, so that the SIGKILL reaches the process that started everything.
      const child = spawn(
        process.execPath,
        ["--import", "tsx", join(PROJECT_ROOT, "test/support/stack-child.ts"), scratch],
        {
          cwd: PROJECT_ROOT,
          stdio: ["ignore", "pipe", "inherit"],
        },
      );
      try {
        const up = await new Promise<{ registryUrl: string; builderUrl: string }>((resolve, reject) => {
          let buffered = "";
          child.stdout.on("data", (chunk: Buffer) => {
            buffered += chunk.toString("utf8");
            const line = buffered.split("\n").find((l) => l.startsWith("{"));
            if (line) resolve(JSON.parse(line) as { registryUrl: string; builderUrl: string });
          });
          child.once("exit", (code) => reject(new Error(`the stack's process exited with ${code} before it was up`)));
        });
        expect((await fetch(`${up.registryUrl}/v2/`)).status).toBe(200);
        const children = childrenOf(child.pid!);
        expect(children.filter((c) => c.name === "workerd")).toHaveLength(1);
        const started = children.map((c) => c.pid);

        child.kill("SIGKILL");
        for (let i = 0; i < 100 && started.some(alive); i++) await new Promise((resolve) => setTimeout(resolve, 100));
        expect(started.filter(alive)).toEqual([]);
        await expect(fetch(`${up.builderUrl}/health`)).rejects.toThrow();
      } finally {
        child.kill("SIGKILL");
        await rm(scratch, { recursive: true, force: true });
      }
    },
  );
});
