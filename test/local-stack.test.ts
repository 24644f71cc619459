// The two ways the local stack serves the worker:
// - TLS=1: https straight from workerd with a self-signed certificate, as the edge serves it. Container clients
//   pull over TLS with verification off, and plain http to that port is refused.
// - the default: plain http through a TCP front (scripts/plain-http-front.ts) that answers TLS hellos with an HTTP
//   400 so clients fall back to http, and passes everything else through whole.
import { spawnSync } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPlainHttpFront, type PlainHttpFront } from "../scripts/plain-http-front.ts";
import { pullAndUnpack, run, runAllowingFailure, runInRootfs, startTestStack, type TestStack } from "./support/stack.ts";

const hasDocker = spawnSync("sh", ["-c", "command -v docker"], { stdio: "ignore" }).status === 0;

/** A GET over https that accepts the stack's self-signed certificate, as `curl -k` does. */
function insecureGet(url: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
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
    const { stdout } = await run("env", [`DOCKER_CONFIG=${config}`, "docker", "manifest", "inspect", "--insecure", `${stack.registryHost}/hello`]);
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
    front = await startPlainHttpFront({ host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port }, { host: "127.0.0.1", port: 0 });
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
