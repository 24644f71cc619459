// The quota of cold builds per client (Workers' rate-limiting binding COLD_BUILDS, keyed by CF-Connecting-IP, which
// Cloudflare sets on every request at the edge; the tests set it themselves): here 2 per minute.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { startTestStack, type TestStack } from "./support/stack.ts";

let stack: TestStack;

const pull = (name: string, client: string | null) =>
  fetch(`${stack.registryUrl}/v2/${name}/manifests/latest`, {
    headers: { Accept: OCI_MANIFEST, ...(client ? { "CF-Connecting-IP": client } : {}) },
  });

beforeAll(async () => {
  stack = await startTestStack({ coldBuildsPerMinute: 2 });
}, 120_000);

afterAll(async () => {
  await stack?.stop();
});

describe("cold builds per client", () => {
  it("a client past its quota gets 429 TOOMANYREQUESTS with Retry-After, and no build starts", async () => {
    const client = "192.0.2.10";
    expect((await pull("hello", client)).status).toBe(200);
    expect((await pull("coreutils", client)).status).toBe(200);
    const jobs = stack.jobsStarted();
    const refused = await pull("hello/coreutils", client);
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("60");
    const body = (await refused.json()) as {
      errors: { code: string; message: string; detail: { retryAfterSeconds: number } }[];
    };
    expect(body.errors[0].code).toBe("TOOMANYREQUESTS");
    expect(body.errors[0].message).toMatch(/COLD_BUILDS rate limit.*retry in 60 seconds/);
    expect(stack.jobsStarted()).toBe(jobs);
    // HEAD, as docker and containerd send first, gets the same status and header.
    const head = await fetch(`${stack.registryUrl}/v2/hello/coreutils/manifests/latest`, {
      method: "HEAD",
      headers: { Accept: OCI_MANIFEST, "CF-Connecting-IP": client },
    });
    expect(head.status).toBe(429);
    expect(head.headers.get("retry-after")).toBe("60");
  }, 120_000);

  it("images already built are served to that client without limit", async () => {
    const client = "192.0.2.10";
    for (let i = 0; i < 5; i++) expect((await pull("hello", client)).status).toBe(200);
  });

  it("another client's quota is its own; once it has built the image, the first client gets it too", async () => {
    const other = "198.51.100.7";
    expect((await pull("hello/coreutils", other)).status).toBe(200);
    expect((await pull("hello/coreutils", "192.0.2.10")).status).toBe(200);
  }, 120_000);

  it("joining a build that runs costs no quota", async () => {
    const starter = "203.0.113.1";
    const joiner = "203.0.113.2";
    // The joiner spends its quota first.
    expect((await pull("moreutils", joiner)).status).toBe(200);
    expect((await pull("nano", joiner)).status).toBe(200);
    const jobs = stack.jobsStarted();
    const started = pull("moreutils/nano", starter);
    const deadline = Date.now() + 30_000;
    while (stack.jobsStarted() === jobs && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 20));
    // The build runs (or has just finished): the joiner, out of quota, still gets the image.
    const joined = await pull("moreutils/nano", joiner);
    expect(joined.status).toBe(200);
    expect((await started).status).toBe(200);
    expect((await pull("moreutils/nano", joiner)).status).toBe(200);
    expect(stack.jobsStarted()).toBe(jobs + 1);
  }, 120_000);
});

describe("the worker's log", () => {
  it("has one JSON line per build requested, and one per call to a builder with its duration", async () => {
    const before = stack.workerLogLines.length;
    expect((await pull("hello/moreutils", "192.0.2.99")).status).toBe(200);
    const entries = stack.workerLogLines.slice(before).flatMap((line) => {
      const at = line.indexOf("{");
      try {
        return at < 0 ? [] : [JSON.parse(line.slice(at)) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
    const requested = entries.filter((e) => e.event === "build-requested");
    expect(requested).toHaveLength(1);
    expect(requested[0]).toMatchObject({ packages: ["hello", "moreutils"], system: "x86_64-linux" });
    const calls = entries.filter((e) => e.event === "builder-call" && e.path === "/jobs");
    expect(calls.length).toBeGreaterThanOrEqual(1);
    for (const call of calls) {
      expect(call.status).toBe(200);
      expect(typeof call.ms).toBe("number");
    }
  }, 120_000);
});
