// The garbage collection's policy (builder-service/gc/policy.ts), on made-up bucket listings: which image records
// stay, and which blobs, manifests, records and markers go with the images that go. Also the S3 listing's and
// DeleteObjects' XML, the Nix store's size as `nix path-info --all --json` reports it, and a build's publishing
// against sweep markers (with a stand-in bucket).
import { describe, expect, it } from "vitest";
import { blobKey, manifestKey, type ImageRecord } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import {
  isRunningJob,
  judgeImages,
  judgeObjects,
  referencedKeys,
  removalOrder,
  revisionsOf,
  type GcSettings,
  type ListedObject,
} from "../builder-service/gc/policy.ts";
import { deleteObjectsBody, parseDeleteErrors, parseListPage } from "../builder-service/s3/xml.ts";
import { storeBytes } from "../builder-service/nix-store-limit.ts";
import { assertDeletable } from "../builder-service/blob-store.ts";
import { publishImage, type SweepBucket } from "../builder-service/gc/sweep-protocol.ts";

const DAY = 86_400_000;
const NOW = Date.parse("2026-12-01T00:00:00Z");
const SETTINGS: GcSettings = {
  graceMs: DAY,
  oldRevisionKeepMs: 30 * DAY,
  oldRevisionUnpulledMs: 7 * DAY,
  keepPinned: true,
};
const hex = (c: string) => c.repeat(64);
const digest = (c: string): Digest => `sha256:${hex(c)}`;
const REV = { current: "c".repeat(40), pinned: "p".repeat(40), old: "0".repeat(40) };

const object = (key: string, ageMs: number, size = 100): ListedObject => ({
  key,
  size,
  lastModifiedMs: NOW - ageMs,
});
const record = (revision: string, builtAgoMs: number, oci: string, docker: string): ImageRecord => ({
  oci: digest(oci),
  docker: digest(docker),
  revision,
  builtAt: new Date(NOW - builtAgoMs).toISOString(),
});
const revisions = revisionsOf([
  { revision: REV.current, source: "s", ttlSeconds: 300, fetchedAt: new Date(NOW).toISOString() },
  { revision: REV.pinned, source: "s", ttlSeconds: 0, fetchedAt: new Date(NOW).toISOString() },
]);

describe("which image records stay", () => {
  const judge = (r: ImageRecord | null, builtAgo: number, pulledAgo: number | null, settings = SETTINGS) =>
    judgeImages(
      [
        {
          object: object(`images/${hex("1")}.json`, builtAgo),
          record: r,
          lastPullMs: pulledAgo === null ? null : NOW - pulledAgo,
        },
      ],
      revisions,
      settings,
      NOW,
    )[0];

  it("keeps a moving tag's current revision however old and unpulled", () => {
    expect(judge(record(REV.current, 400 * DAY, "a", "b"), 400 * DAY, null)).toMatchObject({ remove: false });
  });

  it("keeps pinned commits, unless told not to", () => {
    expect(judge(record(REV.pinned, 400 * DAY, "a", "b"), 400 * DAY, null)).toMatchObject({
      remove: false,
      why: "a pinned commit",
    });
    const expired = judge(record(REV.pinned, 400 * DAY, "a", "b"), 400 * DAY, null, { ...SETTINGS, keepPinned: false });
    expect(expired.remove).toBe(true);
    expect(expired.why).toMatch(/^pinned commit, built 400 d 0 h ago/);
  });

  it("removes an old revision only when both old enough and unpulled long enough", () => {
    expect(judge(record(REV.old, 31 * DAY, "a", "b"), 31 * DAY, 8 * DAY).remove).toBe(true);
    expect(judge(record(REV.old, 31 * DAY, "a", "b"), 31 * DAY, null).remove).toBe(true);
    // Pulled 6 days ago.
    expect(judge(record(REV.old, 31 * DAY, "a", "b"), 31 * DAY, 6 * DAY).remove).toBe(false);
    // Built 29 days ago, never pulled since.
    expect(judge(record(REV.old, 29 * DAY, "a", "b"), 29 * DAY, null).remove).toBe(false);
  });

  it("counts the build as a pull: an image built a day ago is not 'unpulled for a week'", () => {
    const settings = { ...SETTINGS, oldRevisionKeepMs: 0 };
    expect(judge(record(REV.old, DAY, "a", "b"), DAY, null, settings).remove).toBe(false);
    expect(judge(record(REV.old, 8 * DAY, "a", "b"), 8 * DAY, null, settings).remove).toBe(true);
  });

  it("removes an unreadable record only once it is past the grace period", () => {
    expect(judge(null, DAY / 2, null).remove).toBe(false);
    expect(judge(null, 2 * DAY, null)).toMatchObject({ remove: true, why: "unreadable image record" });
  });
});

describe("which other objects stay", () => {
  // Image 1 (kept) uses layers a, b and config c; image 2 (removed) used layers a, d and config e.
  const kept = record(REV.current, 40 * DAY, "1", "2");
  const manifests = new Map<Digest, { config: Digest; layers: Digest[] } | null>([
    [digest("1"), { config: digest("c"), layers: [digest("a"), digest("b")] }],
    [digest("2"), { config: digest("c"), layers: [digest("a"), digest("b")] }],
  ]);
  const keyA = hex("1");
  const keyB = hex("2");
  const old = 2 * DAY;
  const objects = [
    object(`images/${keyA}.json`, 40 * DAY),
    object(`images/${keyB}.json`, 40 * DAY),
    ...["1", "2", "3", "4"].map((c) => object(manifestKey(digest(c)), old)),
    ...["a", "b", "c", "d", "e"].map((c) => object(blobKey(digest(c)), old, 1000)),
    object(blobKey(digest("f")), DAY / 2, 1000), // young: a build in progress uploaded it
    object("builder-cache/layers/ra.json", old),
    object("builder-cache/layers/rd.json", DAY / 2), // young, but its blob goes
    object("builder-cache/layers/rg.json", old), // names a blob that is not there
    object("builder-cache/layers/rx.json", old), // unreadable
    object("builder-cache/startup-check", old),
    object(`jobs/${keyA}.json`, old),
    object(`jobs/${keyB}.json`, old),
    object(`jobs/${hex("3")}.json`, DAY / 2), // a job of the last hours
    object(`jobs/${hex("4")}.json`, 3 * DAY), // running for days (a very long build): it stays
    object(`recent-jobs/0000000000002-${hex("4")}`, 3 * DAY),
    object(`recent-jobs/0000000000001-${keyB}`, old),
    object(`pulls/${keyA}`, old),
    object(`pulls/${keyB}`, old),
    object("resolutions/latest.json", 400 * DAY),
    object("tags/hello/latest", 400 * DAY),
    object("gc/sweeps/x.json", old),
  ];
  const images = [
    { key: `images/${keyA}.json`, size: 100, remove: false, why: "current" },
    { key: `images/${keyB}.json`, size: 100, remove: true, why: "old revision" },
  ];
  const verdicts = judgeObjects(
    {
      nowMs: NOW,
      objects,
      images,
      referenced: referencedKeys([kept], manifests),
      runningJobs: new Set([hex("4")]),
      layerRecords: new Map([
        ["builder-cache/layers/ra.json", digest("a")],
        ["builder-cache/layers/rd.json", digest("d")],
        ["builder-cache/layers/rg.json", digest("9")],
        ["builder-cache/layers/rx.json", null],
      ]),
    },
    SETTINGS,
  );
  const removed = verdicts.filter((v) => v.remove).map((v) => v.key);

  it("judges every object listed, once", () => {
    expect(verdicts.map((v) => v.key).sort()).toEqual(objects.map((o) => o.key).sort());
  });

  it("removes exactly what no kept image needs, and what belonged to removed images", () => {
    expect(removed.sort()).toEqual(
      [
        `images/${keyB}.json`,
        manifestKey(digest("3")),
        manifestKey(digest("4")),
        blobKey(digest("d")),
        blobKey(digest("e")),
        "builder-cache/layers/rd.json",
        "builder-cache/layers/rg.json",
        "builder-cache/layers/rx.json",
        `jobs/${keyB}.json`,
        `recent-jobs/0000000000001-${keyB}`,
        `pulls/${keyB}`,
      ].sort(),
    );
  });

  it("never removes what is young, a running job's records, the worker's resolutions and tags, or sweep markers", () => {
    for (const key of [
      blobKey(digest("f")),
      `jobs/${hex("3")}.json`,
      `jobs/${hex("4")}.json`,
      `recent-jobs/0000000000002-${hex("4")}`,
      "resolutions/latest.json",
      "tags/hello/latest",
      "gc/sweeps/x.json",
    ])
      expect(removed).not.toContain(key);
  });

  it("removes image records first and blobs last", () => {
    const order = [
      blobKey(digest("d")),
      "builder-cache/layers/rd.json",
      manifestKey(digest("3")),
      `jobs/${keyB}.json`,
      `images/${keyB}.json`,
    ].sort((a, b) => removalOrder(a) - removalOrder(b));
    expect(order).toEqual([
      `images/${keyB}.json`,
      `jobs/${keyB}.json`,
      manifestKey(digest("3")),
      "builder-cache/layers/rd.json",
      blobKey(digest("d")),
    ]);
  });

  it("deletes only keys the collection may remove", () => {
    expect(() => assertDeletable(blobKey(digest("d")))).not.toThrow();
    expect(() => assertDeletable(`pulls/${keyB}`)).not.toThrow();
    for (const key of ["resolutions/latest.json", "tags/hello/latest", "blobs/sha256/../images/x"])
      expect(() => assertDeletable(key)).toThrow(/does not delete/);
  });
});

describe("S3 listings and deletes", () => {
  it("reads a ListObjectsV2 page of one object and of several, and its continuation", () => {
    const one = parseListPage(
      `<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a&amp;b</Key>` +
        `<LastModified>2026-12-01T00:00:00.000Z</LastModified><Size>5</Size></Contents></ListBucketResult>`,
    );
    expect(one).toEqual({ objects: [{ key: "a&b", size: 5, lastModifiedMs: NOW }], next: null });
    const two = parseListPage(
      `<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>` +
        `<Contents><Key>a</Key><LastModified>2026-12-01T00:00:00Z</LastModified><Size>1</Size></Contents>` +
        `<Contents><Key>b</Key><LastModified>2026-12-01T00:00:00Z</LastModified><Size>2</Size></Contents></ListBucketResult>`,
    );
    expect(two.objects.map((o) => o.key)).toEqual(["a", "b"]);
    expect(two.next).toBe("t1");
    expect(parseListPage("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>").objects).toEqual([]);
    expect(() => parseListPage("<html>proxy error</html>")).toThrow(/not a ListBucketResult/);
  });

  it("writes DeleteObjects and reads its errors", () => {
    expect(deleteObjectsBody(["a", "b"])).toBe(
      "<Delete><Quiet>true</Quiet><Object><Key>a</Key></Object><Object><Key>b</Key></Object></Delete>",
    );
    expect(parseDeleteErrors("<DeleteResult></DeleteResult>")).toEqual([]);
    expect(
      parseDeleteErrors(
        "<DeleteResult><Error><Key>k</Key><Code>AccessDenied</Code><Message>no</Message></Error></DeleteResult>",
      ),
    ).toEqual([{ key: "k", code: "AccessDenied", message: "no" }]);
  });
});

describe("the Nix store's size", () => {
  it("adds up narSize from Nix 2.8's list and from later versions' object", () => {
    expect(
      storeBytes(
        JSON.stringify([
          { path: "/nix/store/a", narSize: 10 },
          { path: "/nix/store/b", narSize: 5 },
        ]),
      ),
    ).toBe(15);
    expect(storeBytes(JSON.stringify({ "/nix/store/a": { narSize: 10 }, "/nix/store/b": { narSize: 7 } }))).toBe(17);
  });
});

describe("publishing while a collection may run (sweep-protocol.ts)", () => {
  /** A bucket whose sweep markers are given per look, in order; the last one stays. */
  function fakeBucket(looks: boolean[]): SweepBucket & { looks: number } {
    const marker = new TextEncoder().encode(
      JSON.stringify({ startedAt: new Date().toISOString(), expiresAt: new Date(Date.now() + 60_000).toISOString() }),
    );
    const bucket = {
      looks: 0,
      async *listObjects(prefix: string) {
        expect(prefix).toBe("gc/sweeps/");
        const live = looks[Math.min(bucket.looks++, looks.length - 1)];
        if (live) yield { key: "gc/sweeps/x.json", size: marker.length, lastModifiedMs: Date.now() };
      },
      getObject: async () => marker,
      putObject: async () => undefined,
      deleteObjects: async () => undefined,
    };
    return bucket;
  }
  const log = { info: () => undefined, warn: () => undefined, error: () => undefined };

  it("waits while a marker is live, checks the objects, then writes once", async () => {
    const bucket = fakeBucket([true, false, false]);
    const events: string[] = [];
    const repaired = await publishImage(
      bucket,
      log,
      "k",
      async () => {
        events.push("ensure");
        return ["blobs/sha256/x"];
      },
      async () => {
        events.push("write");
      },
    );
    expect(events).toEqual(["ensure", "write"]);
    expect(repaired).toEqual(["blobs/sha256/x"]);
    expect(bucket.looks).toBe(3);
  });

  it("starts again when a collection began while the objects were being checked", async () => {
    const bucket = fakeBucket([false, true, false, false]);
    const events: string[] = [];
    await publishImage(
      bucket,
      log,
      "k",
      async () => {
        events.push("ensure");
        return [];
      },
      async () => {
        events.push("write");
      },
    );
    // The first check's result was not trusted: checked again after the collection, then written.
    expect(events).toEqual(["ensure", "ensure", "write"]);
  });
});

describe("a running job", () => {
  const job = (phase: "building" | "done", updatedAgoMs: number) =>
    ({ phase, updatedAt: new Date(NOW - updatedAgoMs).toISOString(), heartbeatSeconds: 5 }) as Parameters<
      typeof isRunningJob
    >[0];

  it("is unfinished and rewritten within ten heartbeats", () => {
    expect(isRunningJob(job("building", 10_000), NOW)).toBe(true);
    expect(isRunningJob(job("building", 60_000), NOW)).toBe(false);
    expect(isRunningJob(job("done", 1_000), NOW)).toBe(false);
  });
});
