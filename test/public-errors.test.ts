// Issue "Hardening": public errors are public. A client gets what it can act on (the unknown package, the build
// log's tail, the tag that is not served); the bucket, its S3 endpoint, the S3 key id and secret, the builder's
// address and BUILDER_SECRET stay in the logs, and every 500 UNKNOWN and 503 carries an id under which the worker's
// or the builder's log has the details.
//
// One stack. Every answer a client (or anyone who finds the builder's port) gets here is checked: the registry's
// errors with the builder up, the builder's open endpoints and its 401s, the builder down, a builder that refuses
// the worker's signature, and a bucket that refuses the builder (a proxy in front of the stack's S3 endpoint answers
// 403 AccessDenied on demand, as R2 does for a token without write access) while an image is built and while a job
// is submitted; then the build records /api/builds shows for those failed jobs.
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { builderStatus } from "../scripts/builder-calls.ts";
import { PROJECT_ROOT, startBuilder, type Builder } from "../scripts/local-stack.ts";
import { startTestStack, TEST_PKGS, type LogEntry, type TestStack } from "./support/stack.ts";
import { startHttpFront } from "./support/http-front.ts";

const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ZERO_DIGEST = `sha256:${"0".repeat(64)}`;

interface Answer {
  what: string;
  status: number;
  headers: Record<string, string>;
  body: string;
}

interface RegistryError {
  code: string;
  message: string;
  detail?: Record<string, unknown>;
}

let stack: TestStack;
let s3: RefusingS3Proxy;
/** What must never reach a client, by name. */
let hidden: { name: string; value: string; isAddress: boolean }[];
/** Every answer checked, for the count at the end. */
const answers: Answer[] = [];

// ---------------------------------------------------------------------------------------------------------------
// A proxy in front of the S3 endpoint that passes requests through untouched (Host included: the builder signs the
// host it connects to) unless `refuse` matches, which gets R2's 403 AccessDenied.

interface RefusingS3Proxy {
  endpoint: string;
  /** Every request, as "METHOD key". */
  seen: string[];
  refuse: ((method: string, key: string) => boolean) | null;
  close(): Promise<void>;
}

const ACCESS_DENIED =
  '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>';

async function startRefusingS3Proxy(target: string, bucket: string): Promise<RefusingS3Proxy> {
  const proxy: RefusingS3Proxy = { endpoint: "", seen: [], refuse: null, close: async () => undefined };
  const front = await startHttpFront(target, (incoming, response, forward) => {
    const path = decodeURIComponent(new URL(incoming.url ?? "/", "http://proxy").pathname);
    const key = path.startsWith(`/${bucket}/`) ? path.slice(bucket.length + 2) : path;
    proxy.seen.push(`${incoming.method} ${key}`);
    if (!proxy.refuse?.(incoming.method ?? "GET", key)) return forward();
    incoming.resume();
    incoming.on("end", () => {
      response.writeHead(403, { "content-type": "application/xml", "content-length": String(ACCESS_DENIED.length) });
      response.end(ACCESS_DENIED);
    });
  });
  proxy.endpoint = front.url;
  proxy.close = front.close;
  return proxy;
}

// ---------------------------------------------------------------------------------------------------------------

beforeAll(async () => {
  stack = await startTestStack();
  s3 = await startRefusingS3Proxy(stack.s3Env.S3_ENDPOINT, stack.s3Env.S3_BUCKET);
  const host = (url: string) => new URL(url).host;
  hidden = [
    { name: "the bucket", value: stack.s3Env.S3_BUCKET, isAddress: false },
    { name: "the S3 endpoint", value: host(stack.s3Env.S3_ENDPOINT), isAddress: true },
    { name: "the S3 endpoint the builder is given (a proxy)", value: host(s3.endpoint), isAddress: true },
    { name: "the S3 access key id", value: stack.s3Env.S3_ACCESS_KEY_ID, isAddress: false },
    { name: "the S3 secret", value: stack.s3Env.S3_SECRET_ACCESS_KEY, isAddress: false },
    { name: "the builder's address", value: host(stack.builder.url), isAddress: true },
    { name: "BUILDER_SECRET", value: stack.secret, isAddress: false },
  ];
}, 120_000);

afterAll(async () => {
  await s3?.close();
  await stack?.stop();
});

/** Asks, keeps the answer and checks that it shows nothing hidden. */
async function ask(what: string, url: string, init: RequestInit = {}): Promise<Answer> {
  const response = await fetch(url, init);
  const answer: Answer = {
    what,
    status: response.status,
    headers: Object.fromEntries(response.headers),
    body: await response.text(),
  };
  answers.push(answer);
  expectNothingHidden(answer);
  return answer;
}

const registry = (what: string, path: string, init?: RequestInit) => ask(what, `${stack.registryUrl}${path}`, init);
const builderAt = (what: string, path: string, init?: RequestInit) => ask(what, `${stack.builder.url}${path}`, init);

function expectNothingHidden(answer: Answer): void {
  // The package set's folder may sit under a checkout named like the bucket (it is the image's public source).
  const text = `${JSON.stringify(answer.headers)}\n${answer.body}`.replaceAll(
    PROJECT_ROOT.replace(/\/$/, ""),
    "<checkout>",
  );
  for (const { name, value, isAddress } of hidden) {
    // 127.0.0.1:4000 must not be taken for 127.0.0.1:40001.
    const found = isAddress ? new RegExp(`${value.replace(/[.]/g, "\\.")}(?!\\d)`).test(text) : text.includes(value);
    expect(found, `${answer.what} (${answer.status}) shows ${name}: ${text}`).toBe(false);
  }
}

function errorOf(answer: Answer): RegistryError {
  const body = JSON.parse(answer.body) as { errors: RegistryError[] };
  expect(body.errors).toHaveLength(1);
  return body.errors[0];
}

/** The id a 500 or 503 carries, in its detail and its message. */
function idOf(answer: Answer): string {
  const error = errorOf(answer);
  const id = String(error.detail?.id);
  expect(id, `${answer.what}: ${answer.body}`).toMatch(ID);
  expect(error.message).toContain(id);
  return id;
}

/** The worker's log lines naming the id (they may take a moment to come through workerd's output). */
async function workerLogged(id: string): Promise<string> {
  return vi.waitFor(
    () => {
      const lines = stack.workerLogLines.filter((line) => line.includes(id));
      expect(lines, `the worker's log has id ${id}`).not.toHaveLength(0);
      return lines.join("\n");
    },
    { timeout: 5_000, interval: 50 },
  );
}

function builderEvents(builder: Builder, event: string): LogEntry[] {
  return builder.logLines.flatMap((line) => {
    try {
      const entry = JSON.parse(line) as LogEntry;
      return entry.event === event ? [entry] : [];
    } catch {
      return [];
    }
  });
}

/** A builder on the stack's builder port (the worker's BUILDER_URL) with other settings; the stack's is stopped. */
async function replaceBuilder(options: { secret?: string; s3Endpoint?: string }): Promise<Builder> {
  await stack.builder.stop();
  return startBuilder({
    pkgsPath: TEST_PKGS,
    builderPort: Number(new URL(stack.builder.url).port),
    builderDataDir: join(stack.scratch, "builder"),
    secret: options.secret ?? stack.secret,
    s3Env: { ...stack.s3Env, ...(options.s3Endpoint ? { S3_ENDPOINT: options.s3Endpoint, S3_MAX_ATTEMPTS: "1" } : {}) },
  });
}

describe("with the builder up", () => {
  it("serves a pull, then answers a client's mistakes with what it can act on", async () => {
    expect((await registry("a pull", "/v2/hello/manifests/latest", { headers: { Accept: OCI_MANIFEST } })).status).toBe(
      200,
    );
    await registry("the landing page", "/");
    await registry("the API check", "/v2/");

    const unknown = await registry("an unknown package", "/v2/hello/nosuchpackage/manifests/latest");
    expect(unknown.status).toBe(404);
    expect(errorOf(unknown)).toMatchObject({ code: "MANIFEST_UNKNOWN", detail: { unknown: ["nosuchpackage"] } });

    const failed = await registry("a failed build", "/v2/broken/manifests/latest");
    expect(failed.status).toBe(500);
    const build = errorOf(failed);
    expect(build.code).toBe("BUILD_FAILED");
    expect(build.message).toMatch(/broken-1\.0/);
    expect(String(build.detail?.log)).toMatch(/broken on purpose/);

    const notServed = await registry("a tag the package set doesn't serve", "/v2/hello/manifests/main");
    expect(notServed.status).toBe(404);
    expect(errorOf(notServed).message).toContain("main");
    expect((await registry("a tag outside the grammar", "/v2/hello/manifests/-bad")).status).toBe(404);
    expect(errorOf(await registry("a malformed digest", "/v2/hello/blobs/sha256:nothex")).code).toBe("DIGEST_INVALID");
    expect((await registry("an unknown blob", `/v2/hello/blobs/${ZERO_DIGEST}`)).status).toBe(404);
    expect((await registry("an unknown manifest", `/v2/hello/manifests/${ZERO_DIGEST}`)).status).toBe(404);
    expect(JSON.parse((await registry("tags/list", "/v2/hello/tags/list")).body)).toEqual({
      name: "hello",
      tags: ["latest"],
    });
    await registry("tags/list of a name never pulled", "/v2/nosuchpackage/tags/list");
    expect((await registry("a push", "/v2/hello/manifests/latest", { method: "PUT", body: "{}" })).status).toBe(405);
    expect((await registry("a build that is not an image key", "/api/builds/nokey")).status).toBe(404);
    const { builds } = JSON.parse((await registry("the build list", "/api/builds")).body) as {
      builds: { phase: string }[];
    };
    expect(builds.map((b) => b.phase)).toContain("failed");
  }, 120_000);

  it("the builder's open endpoints say only that it is up and ready, and its 401s name no internals", async () => {
    const health = await builderAt("the builder's /health", "/health");
    expect(JSON.parse(health.body)).toEqual({ ok: true });
    const ready = await builderAt("the builder's /ready", "/ready");
    expect([ready.status, JSON.parse(ready.body)]).toEqual([200, { ready: true }]);
    for (const [method, path] of [
      ["POST", "/jobs"],
      ["POST", "/resolve"],
      ["GET", "/status"],
    ]) {
      const refused = await builderAt(`unsigned ${method} ${path} to the builder`, path, {
        method,
        ...(method === "POST"
          ? { body: JSON.stringify({ tag: "latest" }), headers: { "content-type": "application/json" } }
          : {}),
      });
      expect(refused.status).toBe(401);
    }
    expect((await builderAt("an unknown builder endpoint", "/nothing")).status).toBe(404);
  });
});

describe("when the registry's own parts fail", () => {
  it("the builder down: 503 BUILDER_UNAVAILABLE with Retry-After and an id; the worker's log has its address under the id", async () => {
    await stack.builder.stop();
    const answer = await registry("a cold pull with the builder down", "/v2/hello/coreutils/manifests/latest");
    expect(answer.status).toBe(503);
    expect(answer.headers["retry-after"]).toBe("30");
    const error = errorOf(answer);
    expect(error.code).toBe("BUILDER_UNAVAILABLE");
    expect(error.message).toContain("builder can't be reached");
    expect(error.detail).toMatchObject({ retryAfterSeconds: 30 });
    const logged = await workerLogged(idOf(answer));
    expect(logged).toContain(new URL(stack.builder.url).host);
  });

  it("a builder refusing the worker's signature: 500 UNKNOWN with an id, resolving or building; the log says why", async () => {
    const builder = await replaceBuilder({ secret: `${stack.secret}-not-the-workers` });
    try {
      const resolving = await registry("resolving a tag at a builder with another secret", "/v2/hello/manifests/main");
      expect(resolving.status).toBe(500);
      expect(errorOf(resolving)).toMatchObject({
        code: "UNKNOWN",
        message: expect.stringContaining('resolving tag "main" failed'),
      });
      expect(await workerLogged(idOf(resolving))).toContain("BUILDER_SECRET");

      const building = await registry(
        "a cold pull at a builder with another secret",
        "/v2/hello/nano/manifests/latest",
      );
      expect(building.status).toBe(500);
      expect(errorOf(building)).toMatchObject({ code: "UNKNOWN", message: expect.stringContaining("building image") });
      expect(await workerLogged(idOf(building))).toContain("BUILDER_SECRET");
    } finally {
      await builder.stop();
    }
  }, 60_000);

  it("the bucket refusing the builder's writes mid-build: BUILD_FAILED with an id; the builder's log has the bucket's answer under it", async () => {
    const builder = await replaceBuilder({ s3Endpoint: s3.endpoint });
    s3.refuse = (method, key) => method === "PUT" && key.startsWith("blobs/");
    try {
      const answer = await registry("a build whose blobs the bucket refuses", "/v2/hello/moreutils/manifests/latest");
      expect(answer.status).toBe(500);
      const error = errorOf(answer);
      expect(error.code).toBe("BUILD_FAILED");
      expect(error.message).toContain("could not write the image into the bucket");
      const id = idOf(answer);
      const crashed = builderEvents(builder, "job-crashed").filter((entry) => entry.id === id);
      expect(crashed).toHaveLength(1);
      // The details are there for the operator: the key that may not write, the bucket, the endpoint.
      expect(String(crashed[0].error)).toContain(
        `the key ${stack.s3Env.S3_ACCESS_KEY_ID} may not write bucket ${stack.s3Env.S3_BUCKET}`,
      );
      expect(String(crashed[0].error)).toContain(s3.endpoint);

      // Its build record, public at /api/builds, carries the same message and id.
      const { builds } = JSON.parse((await registry("the build list after a bucket failure", "/api/builds")).body) as {
        builds: { imageKey: string; packages: string[]; error?: RegistryError }[];
      };
      const record = builds.find((b) => b.packages.join("/") === "hello/moreutils");
      expect(record?.error).toMatchObject({ code: "BUILD_FAILED", detail: { id } });
      await registry("the failed build's record", `/api/builds/${record!.imageKey}`);
    } finally {
      s3.refuse = null;
      await builder.stop();
    }
  }, 120_000);

  it("/ready, asked 100 times by anyone: 503 saying nothing more, one look at the bucket; the log has the problem once, /status has it", async () => {
    const builder = await replaceBuilder({ s3Endpoint: s3.endpoint });
    // The readiness check HEADs the object the builder wrote at startup.
    s3.refuse = (method, key) => method === "HEAD" && key === "builder-cache/startup-check";
    const looks = () => s3.seen.filter((request) => request === "HEAD builder-cache/startup-check").length;
    try {
      const before = looks();
      const started = performance.now();
      const asked = [
        ...(await Promise.all(
          Array.from({ length: 50 }, () => builderAt("the builder's /ready, 50 at once", "/ready")),
        )),
        ...(await Array.from({ length: 50 }).reduce<Promise<Answer[]>>(
          async (earlier) => [...(await earlier), await builderAt("the builder's /ready, 50 in a row", "/ready")],
          Promise.resolve([]),
        )),
      ];
      const ms = performance.now() - started;
      expect(asked.map((a) => [a.status, a.body])).toEqual(
        Array.from({ length: 100 }, () => [503, JSON.stringify({ ready: false })]),
      );
      expect(looks() - before).toBe(1);
      const problems = builderEvents(builder, "not-ready");
      expect(problems).toHaveLength(1);
      expect(String(problems[0].problem)).toContain(stack.s3Env.S3_BUCKET);
      const status = await builderStatus(builder.url, stack.secret);
      expect(status).toMatchObject({ ready: false, problem: problems[0].problem });
      console.log(`100 unsigned /ready answered in ${Math.round(ms)} ms with ${looks() - before} look at the bucket`);
    } finally {
      s3.refuse = null;
      await builder.stop();
    }
  }, 60_000);

  it("the bucket refusing the builder's reads as a job is submitted: the builder's 500 UNKNOWN, relayed, with an id in its log", async () => {
    const builder = await replaceBuilder({ s3Endpoint: s3.endpoint });
    s3.refuse = (method, key) => method === "GET" && key.startsWith("images/");
    try {
      const answer = await registry(
        "a job submitted while the bucket refuses reads",
        "/v2/hello/nano/manifests/latest",
      );
      expect(answer.status).toBe(500);
      expect(errorOf(answer).code).toBe("UNKNOWN");
      const id = idOf(answer);
      const failed = builderEvents(builder, "request-failed").filter((entry) => entry.id === id);
      expect(failed).toHaveLength(1);
      expect(String(failed[0].error)).toContain(stack.s3Env.S3_BUCKET);
    } finally {
      s3.refuse = null;
      await builder.stop();
    }
  }, 60_000);

  it("back to normal: the same pulls succeed, and no answer in this file showed what it must not", async () => {
    await stack.restartBuilder(0);
    expect((await registry("a pull once all is well again", "/v2/hello/nano/manifests/latest")).status).toBe(200);
    // Checked one by one as they came; the count shows how many there were.
    expect(answers.length).toBeGreaterThan(25);
    console.log(`${answers.length} answers checked for ${hidden.map((h) => h.name).join(", ")}`);
  }, 120_000);
});
