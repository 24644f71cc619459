// Issue "Hardening": load on loopback, bounded in count and time. One stack whose builder runs one build at a time
// and queues QUEUE more (BUILDER_MAX_BUILDS=1, BUILDER_MAX_QUEUE=4), serving the offline package set:
//
// - 200 concurrent warm pulls of one image (shell/hello), each the manifest and then every blob, 3 at a time as
//   containerd fetches them and each on a connection of its own as skopeo does: all succeed, every byte hashes to its
//   digest, none reaches the builder; throughput and p50/p99 latency printed;
// - 50 concurrent cold pulls of one image start one build, and all get the same manifest;
// - 100 concurrent cold pulls of 100 different images (three packages of the set each): at least the builder's cap
//   (one running, four queued) are built, every other answer is 503 BUILDER_BUSY or 429 TOOMANYREQUESTS with
//   Retry-After, the builder's memory stays bounded, and builder and worker answer afterwards (a refused image
//   builds when pulled again).
//
// The figures are printed (console.log) for the README's Benchmark section.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import type { RegistryErrorBody } from "../common/registry-errors.ts";
import { startTestStack, type TestStack } from "./support/stack.ts";

const QUEUE = 4;
const WARM_PULLS = 200;
const SAME_IMAGE_PULLS = 50;
const DIFFERENT_IMAGES = 100;
/** Blobs a pull fetches at once (containerd's default). */
const BLOBS_AT_ONCE = 3;
/** The builder's own processes (not the Nix processes it runs), and workerd, may grow by no more than this under load. */
const MAX_GROWTH_MIB = 100;

/** Packages of package-sets/test-pkgs (not `broken` or the aliases), for images no other part of this file pulls. */
const PACKAGES = [
  "2048",
  "bashinteractive",
  "busybox",
  "cacert",
  "coreutils",
  "dataset",
  "greeting",
  "hello",
  "iana-etc",
  "moreutils",
  "nano",
  "tools.greet",
];

let stack: TestStack;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function descendants(pid: number): number[] {
  try {
    const direct = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
    return direct.flatMap((child) => [child, ...descendants(child)]);
  } catch {
    return []; // ended meanwhile
  }
}

/** Resident memory of the processes among `pids` whose name matches, in MiB. */
function residentMiB(pids: number[], name: RegExp): number {
  let kib = 0;
  for (const pid of pids) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      if (name.test(/^Name:\s+(\S+)/m.exec(status)?.[1] ?? "")) kib += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    } catch {
      // ended meanwhile
    }
  }
  return kib / 1024;
}

interface Memory {
  /** The builder's own processes: tsx and the node it starts (not the Nix processes it runs). */
  builder: number;
  /** The builder with the Nix processes running at the moment. */
  builderTree: number;
  /** workerd: the worker's isolates and its coordinators (Durable Objects). */
  workerd: number;
}

function memory(): Memory {
  const root = stack.builder.process.pid!;
  const tree = [root, ...descendants(root)];
  return {
    builder: residentMiB(tree, /^(node|tsx)$/),
    builderTree: residentMiB(tree, /./),
    workerd: residentMiB(descendants(process.pid), /^workerd$/),
  };
}

/** Samples memory every 100 ms until stopped; returns the peak of each. */
function sampleMemory(): { stop(): Promise<Memory> } {
  const peak = memory();
  let sampling = true;
  const done = (async () => {
    while (sampling) {
      const now = memory();
      for (const key of Object.keys(peak) as (keyof Memory)[]) peak[key] = Math.max(peak[key], now[key]);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return {
    async stop() {
      sampling = false;
      await done;
      return peak;
    },
  };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body's sha256 digest, and the body itself when asked for. */
  digest: string;
  body: Buffer | null;
  bytes: number;
  ms: number;
}

/**
 * A GET on a connection of its own, as skopeo and bench/wire-pull.ts fetch (so no answer waits on another on a shared
 * connection, and a connection the server closes is never reused); the body hashed as it streams in.
 */
function get(path: string, options: { accept?: string; keep?: boolean } = {}): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const request = http.get(
      `${stack.registryUrl}${path}`,
      { agent: false, headers: options.accept ? { Accept: options.accept } : {} },
      (response) => {
        const hash = createHash("sha256");
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on("data", (chunk: Buffer) => {
          hash.update(chunk);
          bytes += chunk.length;
          if (options.keep) chunks.push(chunk);
        });
        response.on("error", reject);
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            digest: `sha256:${hash.digest("hex")}`,
            body: options.keep ? Buffer.concat(chunks) : null,
            bytes,
            ms: performance.now() - started,
          }),
        );
      },
    );
    request.on("error", reject);
  });
}

interface Pulled {
  status: number;
  manifest: ImageManifest | null;
  manifestDigest: string | null;
  ms: number;
  bytes: number;
  retryAfter: string | null;
  code: string | null;
}

/** A manifest GET by tag: the status, the manifest (its digest checked against its bytes) or the error's code. */
async function pullManifest(name: string): Promise<Pulled> {
  const answer = await get(`/v2/${name}/manifests/latest`, { accept: OCI_MANIFEST, keep: true });
  const text = answer.body!.toString("utf8");
  const common = { ms: answer.ms, bytes: answer.bytes };
  if (answer.status !== 200) {
    const code = (JSON.parse(text) as RegistryErrorBody).errors[0]?.code ?? null;
    const retryAfter = answer.headers["retry-after"] ?? null;
    return { ...common, status: answer.status, manifest: null, manifestDigest: null, retryAfter, code };
  }
  expect(answer.digest, `${name}: the manifest's bytes and its Docker-Content-Digest`).toBe(
    answer.headers["docker-content-digest"],
  );
  return {
    ...common,
    status: 200,
    manifest: JSON.parse(text) as ImageManifest,
    manifestDigest: answer.digest,
    retryAfter: null,
    code: null,
  };
}

/**
 * A whole pull: the manifest, then every blob (BLOBS_AT_ONCE at a time), each checked against its digest. `requests`
 * gets the time of each request (to the end of its body).
 */
async function pullImage(
  name: string,
  requests: number[] = [],
): Promise<{ ms: number; bytes: number; manifestDigest: string }> {
  const started = performance.now();
  const { status, manifest, manifestDigest, bytes: manifestBytes, ms } = await pullManifest(name);
  requests.push(ms);
  expect(status).toBe(200);
  const digests = [manifest!.config.digest, ...manifest!.layers.map((layer) => layer.digest)];
  let bytes = manifestBytes;
  const next = async (): Promise<void> => {
    for (let digest = digests.shift(); digest; digest = digests.shift()) {
      const blob = await get(`/v2/${name}/blobs/${digest}`);
      requests.push(blob.ms);
      expect(blob.status, digest).toBe(200);
      expect(blob.digest, `blob ${digest} of ${name}`).toBe(digest);
      bytes += blob.bytes;
    }
  };
  await Promise.all(Array.from({ length: BLOBS_AT_ONCE }, next));
  return { ms: performance.now() - started, bytes, manifestDigest: manifestDigest! };
}

describe("load on loopback", () => {
  beforeAll(async () => {
    stack = await startTestStack({ builderEnv: { BUILDER_MAX_BUILDS: "1", BUILDER_MAX_QUEUE: String(QUEUE) } });
  }, 180_000);

  afterAll(async () => {
    await stack?.stop();
  });

  it(`${WARM_PULLS} concurrent warm pulls of one image all get every byte right`, async () => {
    const first = await pullImage("shell/hello"); // builds it
    const { manifest } = await pullManifest("shell/hello");
    const blobs = 1 + manifest!.layers.length;

    const jobs = stack.jobsStarted();
    const before = memory();
    const sampler = sampleMemory();
    const requests: number[] = [];
    const started = performance.now();
    const pulls = await Promise.all(Array.from({ length: WARM_PULLS }, () => pullImage("shell/hello", requests)));
    const seconds = (performance.now() - started) / 1000;
    const peak = await sampler.stop();
    for (const pull of pulls) expect(pull.manifestDigest).toBe(first.manifestDigest);
    // Served from the bucket: not one request reached the builder.
    expect(stack.jobsStarted()).toBe(jobs);
    const ms = pulls.map((pull) => pull.ms).sort((a, b) => a - b);
    requests.sort((a, b) => a - b);
    const mib = pulls.reduce((sum, pull) => sum + pull.bytes, 0) / 1024 ** 2;
    console.log(
      `warm: ${WARM_PULLS} concurrent pulls of shell/hello (manifest + ${blobs} blobs, ${(first.bytes / 1024 ** 2).toFixed(1)} MiB each, ` +
        `${BLOBS_AT_ONCE} blobs at a time) in ${seconds.toFixed(2)} s: ${(WARM_PULLS / seconds).toFixed(0)} pulls/s, ` +
        `${(requests.length / seconds).toFixed(0)} requests/s, ${(mib / seconds).toFixed(0)} MiB/s; ` +
        `per pull p50 ${percentile(ms, 50).toFixed(0)} ms, p99 ${percentile(ms, 99).toFixed(0)} ms; ` +
        `per request p50 ${percentile(requests, 50).toFixed(0)} ms, p99 ${percentile(requests, 99).toFixed(0)} ms; ` +
        `workerd ${before.workerd.toFixed(0)} -> ${peak.workerd.toFixed(0)} MiB`,
    );
  }, 90_000);

  it(`${SAME_IMAGE_PULLS} concurrent cold pulls of one image start one build`, async () => {
    const name = "shell/greeting";
    const jobs = stack.jobsStarted();
    const builds = stack.builds();
    const started = performance.now();
    const pulls = await Promise.all(Array.from({ length: SAME_IMAGE_PULLS }, () => pullManifest(name)));
    const seconds = (performance.now() - started) / 1000;
    expect(pulls.map((pull) => pull.status)).toEqual(Array(SAME_IMAGE_PULLS).fill(200));
    expect(new Set(pulls.map((pull) => pull.manifestDigest)).size).toBe(1);
    expect(stack.jobsStarted() - jobs).toBe(1);
    expect(stack.builds() - builds).toBe(1);
    const ms = pulls.map((pull) => pull.ms).sort((a, b) => a - b);
    console.log(
      `cold, one image: ${SAME_IMAGE_PULLS} concurrent pulls of ${name}: 1 build, all 200 with the same manifest after ` +
        `${percentile(ms, 50).toFixed(0)} ms (p50) to ${ms.at(-1)!.toFixed(0)} ms (last), ${seconds.toFixed(2)} s in all`,
    );
  }, 60_000);

  it(`${DIFFERENT_IMAGES} concurrent cold pulls of different images: the cap's worth built, the rest refused with Retry-After, memory bounded`, async () => {
    const triples: string[] = [];
    for (let a = 0; a < PACKAGES.length; a++)
      for (let b = a + 1; b < PACKAGES.length; b++)
        for (let c = b + 1; c < PACKAGES.length; c++) triples.push(`${PACKAGES[a]}/${PACKAGES[b]}/${PACKAGES[c]}`);
    // Every other one of the 220, for a spread of packages.
    const names = triples.filter((_, i) => i % 2 === 0).slice(0, DIFFERENT_IMAGES);
    expect(names).toHaveLength(DIFFERENT_IMAGES);

    const jobs = stack.jobsStarted();
    const before = memory();
    const sampler = sampleMemory();
    const started = performance.now();
    const pulls = await Promise.all(names.map(async (name) => ({ name, ...(await pullManifest(name)) })));
    const seconds = (performance.now() - started) / 1000;
    const peak = await sampler.stop();

    const built = pulls.filter((pull) => pull.status === 200);
    const refused = pulls.filter((pull) => pull.status !== 200);
    for (const pull of refused) {
      expect([503, 429], `${pull.name}: ${pull.status} ${pull.code}`).toContain(pull.status);
      expect(pull.code).toBe(pull.status === 503 ? "BUILDER_BUSY" : "TOOMANYREQUESTS");
      expect(pull.retryAfter, pull.name).toMatch(/^[1-9]\d*$/);
    }
    // One running and QUEUE waiting at least; more when a build ended before the last pull reached the builder.
    expect(built.length).toBeGreaterThanOrEqual(1 + QUEUE);
    // Each admitted image was built once, and nothing was started for a refused one.
    expect(stack.jobsStarted() - jobs).toBe(built.length);
    expect(
      peak.builder - before.builder,
      `the builder grew from ${before.builder.toFixed(0)} MiB to ${peak.builder.toFixed(0)} MiB`,
    ).toBeLessThan(MAX_GROWTH_MIB);
    expect(
      peak.workerd - before.workerd,
      `workerd grew from ${before.workerd.toFixed(0)} MiB to ${peak.workerd.toFixed(0)} MiB`,
    ).toBeLessThan(MAX_GROWTH_MIB);

    const refusedMs = refused.map((pull) => pull.ms).sort((a, b) => a - b);
    const builtMs = built.map((pull) => pull.ms).sort((a, b) => a - b);
    console.log(
      `cold, ${DIFFERENT_IMAGES} images at once (BUILDER_MAX_BUILDS=1, BUILDER_MAX_QUEUE=${QUEUE}): ${built.length} built (200), ` +
        `${refused.filter((p) => p.status === 503).length} refused 503 BUILDER_BUSY, ${refused.filter((p) => p.status === 429).length} 429 ` +
        `(Retry-After ${[...new Set(refused.map((p) => p.retryAfter))].join(", ") || "-"} s), ` +
        `in ${seconds.toFixed(1)} s; refusals answered in p50 ${refusedMs.length ? percentile(refusedMs, 50).toFixed(0) : "-"} ms, ` +
        `p99 ${refusedMs.length ? percentile(refusedMs, 99).toFixed(0) : "-"} ms; built ones in ${builtMs[0].toFixed(0)}-${builtMs.at(-1)!.toFixed(0)} ms; ` +
        `resident memory before and at the peak: builder ${before.builder.toFixed(0)} -> ${peak.builder.toFixed(0)} MiB ` +
        `(with Nix's processes ${peak.builderTree.toFixed(0)} MiB), workerd ${before.workerd.toFixed(0)} -> ${peak.workerd.toFixed(0)} MiB`,
    );

    // Still standing: the builder answers, the worker serves, and a refused image builds when pulled again.
    expect(stack.builder.process.exitCode).toBeNull();
    const health = await fetch(`${stack.builder.url}/health`);
    expect(await health.json()).toEqual({ ok: true });
    expect((await pullManifest("shell/hello")).status).toBe(200);
    if (refused.length) expect((await pullManifest(refused[0].name)).status).toBe(200);
  }, 90_000);
});
