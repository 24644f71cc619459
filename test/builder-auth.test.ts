// Issue "Production path": the builder serves only its worker. Every endpoint but /health and /ready wants an
// HMAC-SHA256 signature over method, path and query, a timestamp, a nonce and the body's hash (common/builder-api.ts);
// a missing, wrong, foreign or stale signature, or one whose nonce was used already, gets 401 UNAUTHORIZED, so a
// captured request can't be replayed.
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NONCE_HEADER, SIGNATURE_HEADER, signRequest, TIMESTAMP_HEADER } from "../common/builder-api.ts";
import type { JobRecord } from "../common/bucket-layout.ts";
import { builderStatus } from "../scripts/builder-calls.ts";
import { startBuilder, startLocalBucket, type Builder } from "../scripts/local-stack.ts";
import { TEST_PKGS } from "./support/stack.ts";

const secret = randomBytes(32).toString("hex");
let builder: Builder;
let bucket: Awaited<ReturnType<typeof startLocalBucket>>;
let scratch: string;

const JOB_ID = randomUUID();
const JOB_BODY = JSON.stringify({
  packages: ["hello"],
  system: "x86_64-linux",
  tag: "latest",
  revision: "0".repeat(40),
  jobId: JOB_ID,
});

const endpoints: { method: "POST"; path: string; body: string }[] = [
  { method: "POST", path: "/jobs", body: JOB_BODY },
  { method: "POST", path: "/resolve", body: JSON.stringify({ tag: "latest" }) },
];

async function call(method: string, path: string, body: string, headers: Record<string, string>): Promise<Response> {
  return fetch(`${builder.url}${path}`, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: method === "POST" ? body : undefined,
  });
}

async function expectUnauthorized(response: Response, reason: RegExp): Promise<void> {
  expect(response.status).toBe(401);
  const body = (await response.json()) as { errors: { code: string; message: string }[] };
  expect(body.errors[0].code).toBe("UNAUTHORIZED");
  expect(body.errors[0].message).toMatch(reason);
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "builder-auth-"));
  bucket = await startLocalBucket(join(scratch, "bucket"));
  builder = await startBuilder({
    builderPort: 0,
    builderDataDir: join(scratch, "builder"),
    pkgsPath: TEST_PKGS,
    secret,
    s3Env: bucket.s3Env,
  });
});

afterAll(async () => {
  await builder?.stop();
  await bucket?.dispose();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("requests to the builder", () => {
  for (const { method, path, body } of endpoints) {
    describe(`${method} ${path}`, () => {
      it("without a signature: 401", async () => {
        await expectUnauthorized(await call(method, path, body, {}), /not signed/);
      });

      it("with a signature that is not hex of the right message: 401", async () => {
        const headers = await signRequest(secret, method, path, body);
        headers[SIGNATURE_HEADER] = "0".repeat(64);
        await expectUnauthorized(await call(method, path, body, headers), /does not match/);
      });

      it("signed with another secret: 401", async () => {
        await expectUnauthorized(
          await call(method, path, body, await signRequest(`${secret}-other`, method, path, body)),
          /does not match/,
        );
      });

      it("correctly signed 5 minutes ago (a replay): 401", async () => {
        const old = await signRequest(secret, method, path, body, Date.now() - 5 * 60_000);
        await expectUnauthorized(
          await call(method, path, body, old),
          /(299|300|301) s old; requests are accepted for 60 s/,
        );
      });

      it("signed for a moment in the future beyond the window: 401", async () => {
        const future = await signRequest(secret, method, path, body, Date.now() + 5 * 60_000);
        await expectUnauthorized(await call(method, path, body, future), /s old; requests are accepted for 60 s/);
      });

      it("correctly signed just now: answered", async () => {
        const response = await call(method, path, body, await signRequest(secret, method, path, body));
        expect(response.status).toBe(200);
        const answer = (await response.json()) as Record<string, unknown>;
        if (path === "/jobs") expect(answer).toMatchObject({ jobId: JOB_ID, request: { packages: ["hello"] } });
        else expect(answer).toHaveProperty("revision");
      });
    });
  }

  it("a signature for one request does not carry over to another path, method or body", async () => {
    const headers = await signRequest(secret, "POST", "/jobs", JOB_BODY);
    await expectUnauthorized(await call("POST", "/resolve", JOB_BODY, headers), /does not match/);
    await expectUnauthorized(await call("POST", "/jobs", JOB_BODY.replace("hello", "curl"), headers), /does not match/);
    // Another job id in the same request: a captured submission can't be turned into another job.
    await expectUnauthorized(
      await call("POST", "/jobs", JOB_BODY.replace(JOB_ID, randomUUID()), headers),
      /does not match/,
    );
    const resolveBody = JSON.stringify({ tag: "latest" });
    await expectUnauthorized(
      await call("POST", "/resolve", resolveBody, await signRequest(secret, "GET", "/resolve", resolveBody)),
      /does not match/,
    );
  });

  it("a malformed timestamp: 401", async () => {
    const headers = await signRequest(secret, "POST", "/jobs", JOB_BODY);
    headers[TIMESTAMP_HEADER] = "yesterday";
    await expectUnauthorized(await call("POST", "/jobs", JOB_BODY, headers), /timestamp is malformed/);
  });

  it("a refused POST /jobs starts no job: only a signed one does", async () => {
    const jobs = async () => (await builderStatus(builder.url, secret)).jobs.started;
    const started = () => builder.logLines.filter((line) => line.includes('"event":"job-started"')).length;
    const before = { health: await jobs(), logged: started() };
    const body = JOB_BODY.replace(JOB_ID, randomUUID()).replace('"hello"', '"coreutils"');
    await expectUnauthorized(await call("POST", "/jobs", body, {}), /not signed/);
    await expectUnauthorized(
      await call("POST", "/jobs", body, await signRequest(`${secret}-other`, "POST", "/jobs", body)),
      /does not match/,
    );
    await expectUnauthorized(
      await call("POST", "/jobs", body, await signRequest(secret, "POST", "/jobs", body, Date.now() - 5 * 60_000)),
      /s old/,
    );
    expect(await jobs()).toBe(before.health);
    expect(started()).toBe(before.logged);
    const signed = await call("POST", "/jobs", body, await signRequest(secret, "POST", "/jobs", body));
    expect(signed.status).toBe(200);
    expect(((await signed.json()) as JobRecord).request.packages).toEqual(["coreutils"]);
    expect(await jobs()).toBe(before.health + 1);
    expect(started()).toBe(before.logged + 1);
  });

  it("the builder serves no blobs: there is no /blobs endpoint, signed or not", async () => {
    const path = `/blobs/sha256:${"a".repeat(64)}`;
    const response = await call("GET", path, "", await signRequest(secret, "GET", path, ""));
    expect(response.status).toBe(404);
    expect(((await response.json()) as { errors: { code: string }[] }).errors[0].code).toBe("UNSUPPORTED");
  });

  it("/health and /ready need no signature and say only up and ready; GET /status, which says more, needs one", async () => {
    const health = await fetch(`${builder.url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ ok: true });
    const ready = await fetch(`${builder.url}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true });
    await expectUnauthorized(await call("GET", "/status", "", {}), /not signed/);
    await expectUnauthorized(
      await call("GET", "/status", "", await signRequest(`${secret}-other`, "GET", "/status", "")),
      /does not match/,
    );
    const status = await builderStatus(builder.url, secret);
    expect(status).toMatchObject({
      ready: true,
      problem: null,
      store: `S3 bucket ${bucket.s3Env.S3_BUCKET} at ${bucket.s3Env.S3_ENDPOINT}`,
    });
    expect(status.jobs.started).toBeGreaterThanOrEqual(0);
  });
});

describe("request bodies, before any signature check", () => {
  /** The builder process's resident memory in KiB (VmRSS; the builder is tsx's child, so its whole tree). */
  function residentKiB(): number {
    let total = 0;
    const pids = [builder.process.pid!, ...childPids(builder.process.pid!)];
    for (const pid of pids) {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      total += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    }
    return total;
  }
  function childPids(pid: number): number[] {
    const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
    return children.flatMap((child) => [child, ...childPids(child)]);
  }

  it("refuses an unsigned 1 GB POST after at most a few MB, with 413 naming the limit, and the builder's memory stays flat", async () => {
    const before = residentKiB();
    const { port, hostname } = new URL(builder.url);
    const socket = net.connect(Number(port), hostname);
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    let answer = "";
    let closed = false;
    socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")));
    socket.on("error", () => undefined); // the builder may reset while we still write
    socket.on("close", () => (closed = true));
    // Chunked, so no Content-Length tells the builder the size up front: it has to count.
    socket.write(
      "POST /jobs HTTP/1.1\r\nHost: builder\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    const chunk = Buffer.alloc(1024 * 1024, 0x20);
    const frame = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n")]);
    let sent = 0;
    const deadline = Date.now() + 60_000;
    // Until the builder answers: a client that went on writing into a socket the builder has closed would be reset,
    // and a reset can take the unread answer with it.
    while (sent < 1024 * 1024 * 1024 && !closed && answer === "" && Date.now() < deadline) {
      if (!socket.write(frame)) {
        await Promise.race([
          new Promise((resolve) => socket.once("drain", resolve)),
          new Promise((resolve) => setTimeout(resolve, 200)),
        ]);
      }
      sent += chunk.length;
    }
    for (let i = 0; i < 50 && !closed; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    socket.destroy();
    expect(closed).toBe(true);
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(answer).toContain("request body too large: the builder takes at most 65536 bytes");
    // What the client got into the socket before the builder closed it: the limit plus what kernel buffers hold.
    expect(sent).toBeLessThan(64 * 1024 * 1024);
    expect(residentKiB() - before).toBeLessThan(32 * 1024);
  });

  it("refuses a body whose Content-Length is over the limit without reading it", async () => {
    const response = await fetch(`${builder.url}/jobs`, { method: "POST", body: "x".repeat(64 * 1024 + 1) });
    expect(response.status).toBe(413);
    expect(response.headers.get("connection")).toBe("close");
  });
});

describe("replayed requests (a nonce in every signature, remembered for the signature window)", () => {
  for (const { method, path, body } of endpoints) {
    it(`${method} ${path} sent twice with the same signature: the second gets 401 naming the replay, and does nothing`, async () => {
      const headers = await signRequest(secret, method, path, body);
      expect((await call(method, path, body, headers)).status).toBe(200);
      const requests = builder.logLines.length;
      await expectUnauthorized(await call(method, path, body, headers), /replayed: its nonce was used already/);
      await expectUnauthorized(await call(method, path, body, headers), /replayed/);
      // Logged as refused, not served.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const logged = builder.logLines.slice(requests).filter((line) => line.includes(`"path":"${path}"`));
      expect(logged.filter((line) => line.includes('"event":"unauthorized"'))).toHaveLength(2);
    });
  }

  it("a request signed as before nonces existed (no nonce header) is refused with 401 saying so", async () => {
    const headers = await signRequest(secret, "POST", "/jobs", JOB_BODY);
    delete headers[NONCE_HEADER];
    await expectUnauthorized(await call("POST", "/jobs", JOB_BODY, headers), /carries no nonce \(x-builder-nonce\)/);
  });

  it("a captured request with a new nonce of its own does not pass: the nonce is signed", async () => {
    const headers = await signRequest(secret, "POST", "/jobs", JOB_BODY);
    headers[NONCE_HEADER] = randomBytes(16).toString("hex");
    await expectUnauthorized(await call("POST", "/jobs", JOB_BODY, headers), /does not match/);
  });

  it("the worker's way of asking after a job, signing each request anew, is answered every time", async () => {
    for (let i = 0; i < 5; i++) {
      expect((await call("POST", "/jobs", JOB_BODY, await signRequest(secret, "POST", "/jobs", JOB_BODY))).status).toBe(
        200,
      );
    }
  });
});

describe("request headers", () => {
  it("headers over the builder's 16 KiB limit get 431 with a registry error naming the limit", async () => {
    const response = await fetch(`${builder.url}/jobs`, {
      method: "POST",
      headers: { "x-padding": "p".repeat(20 * 1024) },
      body: "{}",
    });
    expect(response.status).toBe(431);
    expect(response.headers.get("content-type")).toBe("application/json");
    const body = (await response.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0].message).toBe("request headers too large: the builder takes at most 16384 bytes of headers");
    // Just under the limit is read, and refused only for what it lacks.
    await expectUnauthorized(
      await call("POST", "/jobs", JOB_BODY, { "x-padding": "p".repeat(15 * 1024) }),
      /not signed/,
    );
  });
});
