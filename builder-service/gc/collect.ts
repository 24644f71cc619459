// One garbage collection of the registry's bucket: `builder-service --collect-garbage [--dry-run]` (main.ts). It
// holds the bucket against concurrent publishing (sweep-protocol.ts), reads what the policy needs, asks the policy
// (policy.ts) and deletes what it says, in an order that never leaves an image record naming something gone. A dry
// run reads and judges the same way and deletes nothing (and needs no hold, so it does not wait).
//
// Why a command on the builder rather than a scheduled worker (Cron Trigger): the builder writes blobs, manifests
// and image records, so the one that deletes them is their writer too; it has the S3 API's listings without a
// worker's limits on subrequests and CPU time; and an operator can run it by hand, with --dry-run first.
import {
  BUILDER_CACHE_PREFIX,
  imageKeyOfPullMarker,
  isImageRecord,
  isJobRecord,
  isLayerRecord,
  isStoredResolution,
  PULLS_PREFIX,
  RECENT_JOBS_PREFIX,
  type ImageRecord,
  type StoredResolution,
} from "../../common/bucket-layout.ts";
import type { Digest } from "../../common/digest.ts";
import { mapWithLimit } from "../bounded-map.ts";
import type { Logger } from "../log.ts";
import {
  imageKeyOfRecord,
  IMAGES_PREFIX,
  isRunningJob,
  JOB_RECORD,
  judgeImages,
  judgeObjects,
  referencedKeys,
  removalOrder,
  revisionsOf,
  type GcSettings,
  type ListedObject,
  type Verdict,
} from "./policy.ts";
import { beginSweep, liveSweeps, type Sweep, type SweepBucket } from "./sweep-protocol.ts";

/** Records read at once. */
const READ_CONCURRENCY = 16;
/** Keys per delete request (the bucket's limit). */
const DELETE_BATCH = 1000;
/** Prefixes whose objects the policy judges. */
const JUDGED_PREFIXES = [
  "manifests/",
  "blobs/",
  `${BUILDER_CACHE_PREFIX}layers/`,
  "jobs/",
  RECENT_JOBS_PREFIX,
  PULLS_PREFIX,
];

export interface Tally {
  count: number;
  bytes: number;
  /** Per kind of object (the key's first part, or builder-cache/layers). */
  byKind: Record<string, { count: number; bytes: number }>;
}

export interface GcReport {
  dryRun: boolean;
  startedAt: string;
  finishedAt: string;
  removed: Tally;
  kept: Tally;
  /** In a dry run: every key that would be removed, with why. */
  removals?: { key: string; why: string }[];
  /** Removals not made because the run reached its time limit (the next run makes them). */
  leftForNextRun: number;
}

export interface CollectOptions {
  dryRun: boolean;
  log: Logger;
}

const kindOf = (key: string) =>
  key.startsWith(`${BUILDER_CACHE_PREFIX}layers/`) ? "builder-cache/layers" : key.split("/")[0];

function tally(verdicts: readonly Verdict[]): Tally {
  const result: Tally = { count: 0, bytes: 0, byKind: {} };
  for (const { key, size } of verdicts) {
    result.count++;
    result.bytes += size;
    const kind = (result.byKind[kindOf(key)] ??= { count: 0, bytes: 0 });
    kind.count++;
    kind.bytes += size;
  }
  return result;
}

async function listAll(bucket: SweepBucket, prefix: string): Promise<ListedObject[]> {
  const objects: ListedObject[] = [];
  for await (const object of bucket.listObjects(prefix)) objects.push(object);
  return objects;
}

async function readJson(bucket: SweepBucket, key: string): Promise<unknown> {
  const bytes = await bucket.getObject(key);
  if (!bytes) return null;
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as unknown;
  } catch {
    return null;
  }
}

/** The config and layers a manifest names, or null when it can't be read as an image manifest. */
function manifestReferences(value: unknown): { config: Digest; layers: Digest[] } | null {
  if (typeof value !== "object" || value === null) return null;
  const { config, layers } = value as { config?: { digest?: unknown }; layers?: { digest?: unknown }[] };
  if (typeof config?.digest !== "string" || !Array.isArray(layers)) return null;
  const digests = layers.map((layer) => layer?.digest);
  if (!digests.every((digest) => typeof digest === "string")) return null;
  return { config: config.digest as Digest, layers: digests as Digest[] };
}

export async function collectGarbage(
  bucket: SweepBucket,
  settings: GcSettings,
  options: CollectOptions,
): Promise<GcReport> {
  const { dryRun, log } = options;
  const startedAt = new Date().toISOString();
  let sweep: Sweep | null = null;
  if (!dryRun) {
    const running = await liveSweeps(bucket);
    if (running.length > 0) {
      throw new Error(
        `another garbage collection is running (started ${running.map((marker) => marker.startedAt).join(", ")}); ` +
          "run again once it has finished",
      );
    }
    log.info("gc-started", { dryRun, settings });
    sweep = await beginSweep(bucket);
  } else {
    log.info("gc-started", { dryRun, settings });
  }
  try {
    // Images first: what the policy judges is what they were at this moment (see sweep-protocol.ts).
    const nowMs = Date.now();
    const imageObjects = await listAll(bucket, IMAGES_PREFIX);
    const [resolutionObjects, pullObjects] = await Promise.all([
      listAll(bucket, "resolutions/"),
      listAll(bucket, PULLS_PREFIX),
    ]);
    const records = await mapWithLimit(imageObjects, READ_CONCURRENCY, async (object) => {
      const value = await readJson(bucket, object.key);
      return isImageRecord(value) ? value : null;
    });
    const resolutions = (
      await mapWithLimit(resolutionObjects, READ_CONCURRENCY, (object) => readJson(bucket, object.key))
    ).filter((value): value is StoredResolution => isStoredResolution(value));
    const lastPulls = new Map(pullObjects.map((object) => [imageKeyOfPullMarker(object.key), object.lastModifiedMs]));
    const images = judgeImages(
      imageObjects.map((object, index) => ({
        object,
        record: records[index],
        lastPullMs: lastPulls.get(imageKeyOfRecord(object.key)) ?? null,
      })),
      revisionsOf(resolutions),
      settings,
      nowMs,
    );
    const kept = records.filter((record, index): record is ImageRecord => record !== null && !images[index].remove);
    const manifestDigests = [...new Set(kept.flatMap((record) => [record.oci, record.docker]))];
    const manifests = new Map(
      await mapWithLimit(manifestDigests, READ_CONCURRENCY, async (digest) => {
        const value = await readJson(bucket, `manifests/sha256/${digest.slice("sha256:".length)}`);
        return [digest, manifestReferences(value)] as const;
      }),
    );

    const others = (await Promise.all(JUDGED_PREFIXES.map((prefix) => listAll(bucket, prefix)))).flat();
    const layerObjects = others.filter((object) => object.key.startsWith(`${BUILDER_CACHE_PREFIX}layers/`));
    const layerRecords = new Map(
      await mapWithLimit(layerObjects, READ_CONCURRENCY, async (object) => {
        const value = await readJson(bucket, object.key);
        return [object.key, isLayerRecord(value) ? value.digest : null] as const;
      }),
    );
    // Job records of images without a kept record: a running job's stay, whatever their age.
    const keptKeys = new Set(
      images.filter((verdict) => !verdict.remove).map((verdict) => imageKeyOfRecord(verdict.key)),
    );
    const jobObjects = others.filter((object) => {
      const key = JOB_RECORD.exec(object.key)?.[1];
      return key !== undefined && !keptKeys.has(key);
    });
    const runningJobs = new Set(
      (
        await mapWithLimit(jobObjects, READ_CONCURRENCY, async (object) => {
          const value = await readJson(bucket, object.key);
          return isJobRecord(value) && isRunningJob(value, nowMs) ? JOB_RECORD.exec(object.key)![1] : null;
        })
      ).filter((key): key is string => key !== null),
    );
    const verdicts = judgeObjects(
      {
        nowMs,
        objects: [...imageObjects, ...others],
        images,
        referenced: referencedKeys(kept, manifests),
        layerRecords,
        runningJobs,
      },
      settings,
    );
    const removals = verdicts
      .filter((verdict) => verdict.remove)
      .sort((a, b) => removalOrder(a.key) - removalOrder(b.key) || a.key.localeCompare(b.key));

    let removed = removals;
    let leftForNextRun = 0;
    if (sweep) {
      const done: Verdict[] = [];
      for (let start = 0; start < removals.length; start += DELETE_BATCH) {
        if (!sweep.mayDelete()) {
          leftForNextRun = removals.length - start;
          log.warn("gc-time-limit", { left: leftForNextRun });
          break;
        }
        const batch = removals.slice(start, start + DELETE_BATCH);
        await bucket.deleteObjects(batch.map((verdict) => verdict.key));
        done.push(...batch);
      }
      removed = done;
    }
    const removedKeys = new Set(removed.map((verdict) => verdict.key));
    const report: GcReport = {
      dryRun,
      startedAt,
      finishedAt: new Date().toISOString(),
      removed: tally(removed),
      kept: tally(verdicts.filter((verdict) => !removedKeys.has(verdict.key))),
      leftForNextRun,
      ...(dryRun ? { removals: removals.map(({ key, why }) => ({ key, why })) } : {}),
    };
    log.info("gc-report", { ...report });
    return report;
  } finally {
    await sweep?.end();
  }
}
