// Builds that outlast a request, one build per image however many ask, and builders that fail mid-build.
//
// One stack for the file: two builders, each behind a stand-in for Cloudflare's proxy that cuts any request whose
// response headers take longer than PROXY_LIMIT_MS (Cloudflare's 524 after 100 s, here 3 s), two instances of the
// worker sharing the bucket and the build coordinators, and a package set with fixtures whose builds take longer
// than that limit (SLOW_SECONDS of sleep; a fresh nonce per run, so Nix builds them every time).
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobPhase } from "../common/bucket-layout.ts";
import { imageKey } from "../common/image-key.ts";
import { parseImageName } from "../common/image-name.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { builderStatus } from "../scripts/builder-calls.ts";
import { PROJECT_ROOT, startStack, type Builder, type Stack } from "../scripts/local-stack.ts";
import { rankBuilders } from "../common/builder-ranking.ts";
import { startOriginTimeoutProxy, type OriginTimeoutProxy } from "./support/origin-timeout-proxy.ts";
import { podmanRun } from "./support/stack.ts";
import { slowProgram } from "./support/slow-fixtures.ts";

const execFileAsync = promisify(execFile);
const PROXY_LIMIT_MS = 3000;
const SLOW_SECONDS = 6;

/** package-sets/test-pkgs plus slow fixtures: each sleeps, then installs a program printing its name and the nonce. */
function slowPackageSet(nonce: string): string {
  const slow = (name: string) => slowProgram(name, SLOW_SECONDS, nonce);
  return `{ system ? builtins.currentSystem, ... }@args:
let base = import ${join(PROJECT_ROOT, "package-sets/test-pkgs")} args;
in base // {${slow("slowtool")}${slow("slowtool2")}${slow("slowtool3")}${slow("slowtool4")}
}
`;
}

interface LogEntry {
  event?: string;
  imageKey?: string;
  digest?: string;
}

const entries = (builder: Builder): LogEntry[] =>
  builder.logLines.flatMap((line) => {
    try {
      return [JSON.parse(line) as LogEntry];
    } catch {
      return [];
    }
  });

describe("build jobs", () => {
  let scratch: string;
  let stack: Stack;
  let proxies: OriginTimeoutProxy[];
  let revision: string;
  const nonce = randomUUID().slice(0, 8);

  const jobsStarted = (key: string) =>
    stack.builders.map(
      (builder) => entries(builder).filter((e) => e.event === "job-started" && e.imageKey === key).length,
    );
  const builds = (key: string) =>
    stack.builders.reduce(
      (n, builder) => n + entries(builder).filter((e) => e.event === "build" && e.imageKey === key).length,
      0,
    );
  const keyOf = async (name: string) => {
    const parsed = parseImageName(name);
    if (!parsed.ok) throw new Error(parsed.reason);
    return imageKey(revision, parsed.image.system, parsed.image.packages, parsed.image.compression);
  };
  const until = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };

  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), "build-jobs-"));
    const pkgsPath = join(scratch, "pkgs");
    await mkdir(pkgsPath);
    await writeFile(join(pkgsPath, "default.nix"), slowPackageSet(nonce));
    proxies = [];
    stack = await startStack({
      pkgsPath,
      port: 0,
      builderPort: 0,
      builders: 2,
      builderDataDir: join(scratch, "builders"),
      workerStateDir: join(scratch, "worker-state"),
      builderFront: async (url) => {
        const proxy = await startOriginTimeoutProxy(url, PROXY_LIMIT_MS);
        proxies.push(proxy);
        return proxy.url;
      },
      workerVars: { BUILDER_STALE_SECONDS: "3" },
      secondWorker: true,
    });
    const latest = await fetch(`${stack.registryUrl}/v2/hello/manifests/latest`);
    expect(latest.status).toBe(200);
    const list = (await (await fetch(`${stack.registryUrl}/api/builds`)).json()) as { builds: { revision: string }[] };
    revision = list.builds[0].revision;
  }, 120_000);

  afterAll(async () => {
    await stack?.stop();
    await Promise.all((proxies ?? []).map((proxy) => proxy.close()));
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  it("the stand-in proxy cuts an origin that takes longer than its limit to answer, with a 524", async () => {
    const slow = http.createServer((_request, response) =>
      setTimeout(() => response.end("late"), PROXY_LIMIT_MS + 1000),
    );
    await new Promise<void>((resolve) => slow.listen(0, "127.0.0.1", resolve));
    const proxy = await startOriginTimeoutProxy(
      `http://127.0.0.1:${(slow.address() as AddressInfo).port}`,
      PROXY_LIMIT_MS,
    );
    try {
      const started = Date.now();
      const response = await fetch(proxy.url);
      expect(response.status).toBe(524);
      expect(Date.now() - started).toBeLessThan(PROXY_LIMIT_MS + 900);
    } finally {
      await proxy.close();
      slow.closeAllConnections();
      slow.close();
    }
  });

  it("an image whose build outlasts the proxy's limit is pulled by skopeo and podman, with its progress on /api/builds", async () => {
    const key = await keyOf("slowtool");
    const seen: JobPhase[] = [];
    let watching = true;
    const watch = (async () => {
      while (watching) {
        const response = await fetch(`${stack.registryUrl}/api/builds/${key}`);
        if (response.status === 200) {
          const { phase } = (await response.json()) as { phase: JobPhase };
          if (seen.at(-1) !== phase) seen.push(phase);
        }
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    })();
    const image = `${stack.registryHost}/slowtool:latest`;
    const layout = join(scratch, "slowtool-oci");
    const podmanDir = await mkdtemp(join(scratch, "pod-"));
    try {
      const [copied, ran] = await Promise.all([
        execFileAsync("skopeo", ["copy", "--src-tls-verify=false", `docker://${image}`, `oci:${layout}:latest`], {
          timeout: 120_000,
        }),
        podmanRun(podmanDir, image, ["slowtool"]),
      ]);
      expect(copied.stdout).toMatch(/Writing manifest/);
      expect(ran.stdout.trim()).toBe(`slowtool ${nonce}`);
    } finally {
      watching = false;
      await watch;
    }
    const index = JSON.parse(await readFile(join(layout, "index.json"), "utf8")) as { manifests: { digest: string }[] };
    expect(index.manifests).toHaveLength(1);

    // Nothing between the worker and the builders waited long enough to be cut.
    expect(proxies.reduce((n, proxy) => n + proxy.cut, 0)).toBe(0);
    const record = (await (await fetch(`${stack.registryUrl}/api/builds/${key}`)).json()) as {
      phase: JobPhase;
      phases: { phase: JobPhase; at: string }[];
      progress: { derivations?: { done: number; total: number }; layers?: { done: number; total: number } };
      image?: { oci: string };
    };
    expect(record.phase).toBe("done");
    expect(record.phases.map((p) => p.phase)).toEqual([
      "queued",
      "evaluating",
      "building",
      "layering",
      "uploading",
      "done",
    ]);
    const at = (phase: JobPhase) => Date.parse(record.phases.find((p) => p.phase === phase)!.at);
    expect(at("layering") - at("building")).toBeGreaterThan(PROXY_LIMIT_MS);
    expect(record.progress.derivations?.total).toBeGreaterThanOrEqual(1);
    expect(record.progress.layers?.done).toBe(record.progress.layers?.total);
    expect(record.image?.oci).toMatch(/^sha256:[0-9a-f]{64}$/);
    // Watched live, the build was seen running, then done.
    expect(seen).toContain("building");
    expect(seen.at(-1)).toBe("done");
    // The public view names no builder and no bucket.
    const text = await (await fetch(`${stack.registryUrl}/api/builds`)).text();
    for (const secret of [
      ...stack.builders.map((b) => new URL(b.url).host),
      ...proxies.map((p) => new URL(p.url).host),
      stack.s3Env.S3_ENDPOINT,
      stack.secret,
    ]) {
      expect(text).not.toContain(secret);
    }
  }, 180_000);

  it("50 concurrent cold pulls through two worker instances start exactly one build", async () => {
    const key = await keyOf("slowtool2");
    const bases = [stack.registryUrl, stack.secondRegistryUrl!];
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        fetch(`${bases[i % 2]}/v2/slowtool2/manifests/latest`, { headers: { Accept: OCI_MANIFEST } }).then(
          async (r) => ({
            status: r.status,
            digest: r.headers.get("docker-content-digest"),
          }),
        ),
      ),
    );
    expect(responses.every((r) => r.status === 200)).toBe(true);
    expect(new Set(responses.map((r) => r.digest)).size).toBe(1);
    expect(jobsStarted(key).reduce((a, b) => a + b, 0)).toBe(1);
    expect(builds(key)).toBe(1);
  }, 180_000);

  it("a client that gives up and comes back joins the build it started", async () => {
    const key = await keyOf("slowtool4");
    const gaveUp = new AbortController();
    const first = fetch(`${stack.registryUrl}/v2/slowtool4/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
      signal: gaveUp.signal,
    });
    await until("the job to start", () => jobsStarted(key).some((n) => n > 0));
    gaveUp.abort();
    await expect(first).rejects.toThrow();
    const again = await fetch(`${stack.registryUrl}/v2/slowtool4/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
    });
    expect(again.status).toBe(200);
    expect(jobsStarted(key).reduce((a, b) => a + b, 0)).toBe(1);
    expect(builds(key)).toBe(1);
  }, 120_000);

  it("a builder stopped in the middle of a build: the pull completes on the other, whose layers the first then reuses", async () => {
    const key = await keyOf("slowtool3");
    const pull = fetch(`${stack.registryUrl}/v2/slowtool3/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
    await until("the job to start", () => jobsStarted(key).some((n) => n > 0));
    const first = jobsStarted(key).findIndex((n) => n > 0);
    const other = 1 - first;
    // Killed while Nix builds (the fixture sleeps): no answer, no clean shutdown.
    const killed = stack.builders[first];
    killed.process.kill("SIGKILL");
    const response = await pull;
    expect(response.status).toBe(200);
    expect(jobsStarted(key)[other]).toBe(1);
    const digest = response.headers.get("docker-content-digest");

    // Every blob of the image is in the bucket: skopeo gets it all from the worker.
    await execFileAsync(
      "skopeo",
      [
        "copy",
        "--src-tls-verify=false",
        `docker://${stack.registryHost}/slowtool3:latest`,
        `oci:${join(scratch, "slowtool3-oci")}:latest`,
      ],
      {
        timeout: 120_000,
      },
    );

    // The stopped builder comes back: its journal names the unfinished job, which another builder has finished.
    const restarted = await stack.restartBuilder(first);
    await until("the restarted builder to listen", () =>
      restarted.logLines.some((line) => line.includes('"event":"listening"')),
    );
    expect(entries(restarted).filter((e) => e.event === "job-resumed" || e.event === "job-started")).toEqual([]);
    expect(await readdir(join(scratch, "builders", String(first + 1), "jobs"))).toEqual([]);
    const again = await fetch(`${stack.registryUrl}/v2/slowtool3/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
    });
    expect(again.headers.get("docker-content-digest")).toBe(digest);

    // An image sharing slowtool3's store paths, ranked to the restarted builder: it reuses the layers the other
    // builder stored, and writes only what is new.
    const workerUrls = proxies.map((proxy) => proxy.url);
    let name: string | null = null;
    // The builders' ports, and so the ranking, differ from run to run: enough candidates that one of them ranks to
    // the restarted builder all but surely (each does with probability 1/2; all 15 miss once in 30,000 runs).
    const extras = ["hello", "coreutils", "moreutils", "nano", "greeting"];
    const combinations = extras.flatMap((a, i) => [a, ...extras.slice(i + 1).map((b) => `${a}/${b}`)]);
    for (const extra of combinations) {
      const candidate = `slowtool3/${extra}`;
      const ranked = await rankBuilders(workerUrls, await keyOf(candidate));
      if (ranked[0] === workerUrls[first]) {
        name = candidate;
        break;
      }
    }
    expect(name).not.toBeNull();
    const before = await builderStatus(restarted.url, stack.secret);
    const shared = await fetch(`${stack.registryUrl}/v2/${name}/manifests/latest`, {
      headers: { Accept: OCI_MANIFEST },
    });
    expect(shared.status).toBe(200);
    expect(jobsStarted(await keyOf(name!))[first]).toBe(1);
    const after = await builderStatus(restarted.url, stack.secret);
    expect(after.layersReused - before.layersReused).toBeGreaterThanOrEqual(2); // busybox and slowtool3 at least

    // No blob was uploaded twice, by either builder, in this whole file.
    const uploads = [killed, ...stack.builders].flatMap((builder) =>
      entries(builder)
        .filter((e) => e.event === "s3-upload")
        .map((e) => e.digest),
    );
    expect(uploads.length).toBeGreaterThan(0);
    expect(new Set(uploads).size).toBe(uploads.length);
  }, 240_000);
});
