// Unit tests of the worker's parts that need no workerd: they use only web-standard APIs, which Node has too.
import * as v from "valibot";
import { describe, expect, it } from "vitest";
import { ResolveResultSchema } from "../common/builder-api.ts";
import { isImageRecord, isJobRecord, isStoredResolution } from "../common/bucket-layout.ts";
import { LruMap } from "../common/lru-map.ts";

describe("the isolate's LRU", () => {
  it("forgets the least recently used entry past its limit", () => {
    const lru = new LruMap<string, number>(2);
    lru.set("a", 1);
    lru.set("b", 2);
    expect(lru.get("a")).toBe(1); // a is now the most recent
    lru.set("c", 3);
    expect(lru.get("b")).toBeUndefined();
    expect(lru.get("a")).toBe(1);
    expect(lru.get("c")).toBe(3);
  });
});

describe("the bucket's records, as the worker reads them (common/bucket-layout.ts)", () => {
  const digest = (c: string) => `sha256:${c.repeat(64)}`;
  const image = { oci: digest("a"), docker: digest("b"), revision: "abc", builtAt: "2026-01-01T00:00:00.000Z" };
  const at = "2026-01-01T00:00:00.000Z";
  const queued = {
    imageKey: "f".repeat(64),
    jobId: "job-1",
    request: { packages: ["hello"], system: "x86_64-linux", tag: "latest", revision: "abc" },
    phase: "queued",
    phases: [{ phase: "queued", at }],
    progress: {},
    startedAt: at,
    updatedAt: at,
    heartbeatSeconds: 5,
  };

  it("takes the records a builder writes", () => {
    expect(isImageRecord(image)).toBe(true);
    expect(isJobRecord(queued)).toBe(true);
    const progress = {
      derivations: { done: 1, total: 2 },
      fetched: { done: 0, total: 3, downloadBytes: 10 },
      layers: { done: 0, total: 4 },
      upload: { done: 0, total: 0 },
    };
    expect(isJobRecord({ ...queued, phase: "uploading", progress })).toBe(true);
    expect(isJobRecord({ ...queued, phase: "done", image })).toBe(true);
    // A code this worker does not know is relayed, not a reason to refuse the record.
    const error = { status: 500, code: "SOMETHING_NEW", message: "no", detail: { log: ["a"] } };
    expect(isJobRecord({ ...queued, phase: "failed", error })).toBe(true);
    expect(isStoredResolution({ revision: "abc", source: "https://example.org", ttlSeconds: 0, fetchedAt: at })).toBe(
      true,
    );
  });

  it("treats a damaged record as absent", () => {
    expect(isImageRecord({ ...image, oci: "md5:abc" })).toBe(false);
    expect(isImageRecord(null)).toBe(false);
    expect(isJobRecord({ ...queued, phase: "paused" })).toBe(false);
    expect(isJobRecord({ ...queued, heartbeatSeconds: undefined })).toBe(false);
    expect(isJobRecord({ ...queued, progress: { fetched: { done: 0, total: 1 } } })).toBe(false);
    expect(isJobRecord({ ...queued, request: { ...queued.request, system: "riscv64-linux" } })).toBe(false);
    expect(isJobRecord({ ...queued, phase: "done", image: { ...image, docker: 7 } })).toBe(false);
    expect(isStoredResolution({ revision: "", source: "x", ttlSeconds: 0, fetchedAt: at })).toBe(false);
    expect(isStoredResolution({ revision: "abc", source: "x", ttlSeconds: -1, fetchedAt: at })).toBe(false);
    expect(isStoredResolution({ revision: "abc", source: "x", ttlSeconds: 300 })).toBe(false);
  });
});

describe("a builder's answer to /resolve (common/builder-api.ts)", () => {
  const problem = (value: unknown) => {
    const result = v.safeParse(ResolveResultSchema, value);
    return result.success ? null : result.issues[0].message;
  };

  it("names what is wrong with it, a missing field included", () => {
    expect(problem({ revision: "abc", source: "s", ttlSeconds: 300 })).toBeNull();
    expect(problem("abc")).toBe("not an object");
    expect(problem({ source: "s", ttlSeconds: 300 })).toBe("revision is missing");
    expect(problem({ revision: "", source: "s", ttlSeconds: 300 })).toBe("revision is missing");
    expect(problem({ revision: "abc", ttlSeconds: 300 })).toBe("source is missing");
    expect(problem({ revision: "abc", source: "s", ttlSeconds: -1 })).toBe("ttlSeconds is not a non-negative number");
    expect(problem({ revision: "abc", source: "s" })).toBe("ttlSeconds is not a non-negative number");
  });
});
