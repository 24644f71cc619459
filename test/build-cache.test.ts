// Same inputs, same bytes; one build however many ask at once; a layer written once is reused.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBuilder, type Builder } from "../scripts/local-stack.ts";
import { build, resolveLatest } from "../scripts/builder-calls.ts";
import { startTestStack, TEST_PKGS, type TestStack } from "./support/stack.ts";

const secret = "build-cache-test-secret-0123456789";
let scratch: string;
let stack: TestStack;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "build-cache-"));
  stack = await startTestStack();
});

afterAll(async () => {
  await stack?.stop();
  await rm(scratch, { recursive: true, force: true });
});

async function freshBuilder(dataDir: string): Promise<Builder> {
  return startBuilder({ pkgsPath: TEST_PKGS, builderPort: 0, builderDataDir: join(scratch, dataDir), secret });
}

describe("the same inputs give the same image", () => {
  it("two builders with separate empty caches, and one restarted, give identical digests", async () => {
    const packages = ["dataset", "greeting", "hello", "tools.greet"];
    const first = await freshBuilder("first");
    const second = await freshBuilder("second");
    try {
      const { revision } = await resolveLatest(first.url, secret);
      expect((await resolveLatest(second.url, secret)).revision).toBe(revision);
      const [a, b] = await Promise.all([build(first.url, secret, packages, revision), build(second.url, secret, packages, revision)]);
      expect(a.cached).toBe(false);
      expect(b.cached).toBe(false);
      expect(b.manifests.oci.digest).toBe(a.manifests.oci.digest);
      expect(b.manifests.docker.digest).toBe(a.manifests.docker.digest);
      expect(b.config).toEqual(a.config);
      expect(b.layers).toEqual(a.layers);

      // After a restart with the cache it had, and on a third builder with nothing at all.
      await first.stop();
      const restarted = await freshBuilder("first");
      const third = await freshBuilder("third");
      try {
        const again = await build(restarted.url, secret, packages, revision);
        expect(again.cached).toBe(true);
        expect(again.manifests.oci.digest).toBe(a.manifests.oci.digest);
        const fresh = await build(third.url, secret, packages, revision);
        expect(fresh.cached).toBe(false);
        expect(fresh.manifests.oci.digest).toBe(a.manifests.oci.digest);
      } finally {
        await restarted.stop();
        await third.stop();
      }
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});

describe("one build per image", () => {
  it("20 concurrent pulls of an image not built yet lead to exactly one build", async () => {
    const before = await stack.builderCounters();
    const buildRequestsBefore = stack.builderRequests("/build");
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fetch(`${stack.registryUrl}/v2/greeting/hello/manifests/latest`, { method: i % 2 ? "HEAD" : "GET" }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(20).fill(200));
    const digests = new Set(responses.map((r) => r.headers.get("docker-content-digest")));
    expect(digests.size).toBe(1);
    expect((await stack.builderCounters()).builds).toBe(before.builds + 1);
    expect(stack.builderRequests("/build")).toBe(buildRequestsBefore + 1);
  });

  it("20 concurrent build requests straight to the builder lead to exactly one build", async () => {
    const { revision } = await resolveLatest(stack.builder.url, stack.secret);
    const before = await stack.builderCounters();
    const results = await Promise.all(
      Array.from({ length: 20 }, () => build(stack.builder.url, stack.secret, ["dataset", "tools.greet"], revision)),
    );
    expect(new Set(results.map((r) => r.manifests.oci.digest)).size).toBe(1);
    expect((await stack.builderCounters()).builds).toBe(before.builds + 1);
  });
});

describe("layers are written once", () => {
  it("a second image reuses the stored layers of the store paths it shares with the first", async () => {
    const { revision } = await resolveLatest(stack.builder.url, stack.secret);
    const first = await build(stack.builder.url, stack.secret, ["hello"], revision);
    const before = await stack.builderCounters();
    const second = await build(stack.builder.url, stack.secret, ["_2048", "hello"], revision);
    const after = await stack.builderCounters();
    // hello's closure (hello, busybox, cacert, iana-etc) is reused; only _2048's store path and the new
    // root filesystem are written.
    const firstStoreLayers = first.layers.slice(0, -1).map((l) => l.digest);
    const secondLayers = second.layers.map((l) => l.digest);
    for (const digest of firstStoreLayers) expect(secondLayers).toContain(digest);
    expect(after.layersWritten - before.layersWritten).toBe(2);
    expect(after.layersReused - before.layersReused).toBe(firstStoreLayers.length);
  });
});
