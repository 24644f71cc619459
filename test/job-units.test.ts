// The parts of build jobs that need no stack: reading Nix's progress from its log, and which builder a job goes to.
import { describe, expect, it } from "vitest";
import { imageKeyOfRecentJob, recentJobKey } from "../common/bucket-layout.ts";
import { sha256Hex } from "../common/digest.ts";
import { assertBuilderWritable } from "../builder-service/blob-store.ts";
import { NixBuildProgress } from "../builder-service/nix-progress.ts";
import { rankBuilders } from "../common/builder-ranking.ts";

describe("Nix build progress", () => {
  it("counts derivations and fetched paths as nix-build announces and runs them", () => {
    const progress = new NixBuildProgress();
    const log = [
      "these 3 derivations will be built:",
      "  /nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv",
      "these 2 paths will be fetched (1.50 MiB download, 6.25 MiB unpacked):",
      "  /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.40",
      "copying path '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.40' from 'https://cache.nixos.org'...",
      "building '/nix/store/4b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-hello-2.12.1.drv'...",
      "hello> unpacking sources",
      "building '/nix/store/5b5v6c7d8e9f0g1h2i3j4k5l6m7n8p9q-image.drv'...",
    ];
    const changed = log.map((line) => progress.line(line));
    expect(changed).toEqual([true, false, true, false, true, true, false, true]);
    expect(progress.progress).toEqual({
      derivations: { done: 1, total: 3 },
      fetched: { done: 1, total: 2, downloadBytes: Math.round(1.5 * 1024 * 1024) },
    });
    progress.finish();
    expect(progress.progress.derivations).toEqual({ done: 3, total: 3 });
    expect(progress.progress.fetched?.done).toBe(2);
  });

  it("reads the singular forms too", () => {
    const progress = new NixBuildProgress();
    progress.line("this derivation will be built:");
    progress.line("this path will be fetched (0.02 MiB download, 0.10 MiB unpacked):");
    expect(progress.progress).toEqual({
      derivations: { done: 0, total: 1 },
      fetched: { done: 0, total: 1, downloadBytes: Math.round(0.02 * 1024 * 1024) },
    });
  });
});

describe("builder ranking", () => {
  const builders = ["https://b1.example.com", "https://b2.example.com", "https://b3.example.com"];
  const keys = Promise.all(Array.from({ length: 600 }, (_, i) => sha256Hex(`image ${i}`)));

  it("ranks every builder once, the same way every time", async () => {
    for (const key of (await keys).slice(0, 20)) {
      const ranked = await rankBuilders(builders, key);
      expect([...ranked].sort()).toEqual(builders);
      expect(await rankBuilders([...builders].reverse(), key)).toEqual(ranked);
    }
  });

  it("spreads keys evenly, and removing a builder moves only that builder's keys", async () => {
    const first = new Map<string, string>();
    for (const key of await keys) first.set(key, (await rankBuilders(builders, key))[0]);
    const counts = builders.map((b) => [...first.values()].filter((x) => x === b).length);
    for (const count of counts) expect(count).toBeGreaterThan(150); // 200 each on average
    for (const key of await keys) {
      const without = (await rankBuilders(builders.slice(0, 2), key))[0];
      if (first.get(key) !== builders[2]) expect(without).toBe(first.get(key));
    }
  });
});

describe("bucket layout", () => {
  it("lists recent jobs newest first", () => {
    const key = "a".repeat(64);
    const older = recentJobKey(key, Date.parse("2026-01-01T00:00:00Z"));
    const newer = recentJobKey(key, Date.parse("2026-06-01T00:00:00Z"));
    expect([older, newer].sort()).toEqual([newer, older]);
    expect(imageKeyOfRecentJob(newer)).toBe(key);
    expect(imageKeyOfRecentJob("recent-jobs/x")).toBeNull();
  });

  it("the builder writes only its own keys, never the worker's", () => {
    const key = "b".repeat(64);
    for (const ok of [`images/${key}.json`, `jobs/${key}.json`, recentJobKey(key, 0), "builder-cache/layers/abc.json"]) {
      expect(() => assertBuilderWritable(ok)).not.toThrow();
    }
    for (const refused of ["resolutions/latest.json", "tags/hello/latest", `images/${key}.json/../x`, "builder-cache/../images/x"]) {
      expect(() => assertBuilderWritable(refused)).toThrow(/does not write/);
    }
  });
});
