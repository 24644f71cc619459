// How a garbage collection and the builds running meanwhile stay out of each other's way, so that a published image
// always pulls whole. The danger: a build finds a layer it can reuse (a layer record, and its blob is there), the
// collection deletes that blob because no image referenced it when it listed the images, and the build then writes
// an image record naming it.
//
// The invariant: an image record is written only while no collection can delete what it names. Protocol:
//
//   collection (collect.ts)                        build, before writing the image record (publishImage below)
//   ----------------------------------------       -------------------------------------------------------------
//   1. put gc/sweeps/<run>.json                    a. C1 := now; list gc/sweeps/: a live marker? wait, go to a.
//   2. wait SWEEP_SETTLE_MS                        b. HEAD every object the image names (manifests, config,
//   3. list images/ (T0), read what they name,        layers); upload again what is missing (layers are
//      list the rest, judge (policy.ts)               deterministic: tarred again from the store paths, which
//   4. delete, stopping at the marker's expiry        stay rooted until then)
//   5. delete its marker                           c. C2 := now; list gc/sweeps/ again: a live marker, or
//                                                     (end of that listing) - C1 >= SWEEP_SETTLE_MS? go to a.
//                                                  d. write the job's and the image's records
//                                                  e. now - C2 > PUBLISH_WINDOW_MS? go to a (repairs, rewrites)
//
// Why it holds, for a collection g (marker put at M, deleting only after M + SWEEP_SETTLE_MS, until it removes its
// marker) and a build b, the bucket being strongly consistent (R2 and S3 both):
//   - M < C1: g was gone by C1 (b saw no marker), so whatever it deleted was gone before b's checks in step b,
//     which put it back;
//   - C1 < M < C2: g deletes nothing before M + SWEEP_SETTLE_MS > C2, and still has its marker then; b sees it at
//     C2 and starts again;
//   - M > C2: g lists the images at M + SWEEP_SETTLE_MS or later, after b's record landed (by C2 +
//     PUBLISH_WINDOW_MS < C2 + SWEEP_SETTLE_MS): g keeps everything the record names.
// A collection that outlives its marker's expiry stops deleting (step 4), and a marker past its expiry (a
// collection that crashed) stops being waited for, CLOCK_SLACK_MS later.
//
// The grace period (GC_GRACE_SECONDS) is not needed for this invariant: it spares a build in progress the
// re-uploads of layers it wrote before its record (an object younger than the grace period is never deleted).
import { randomUUID } from "node:crypto";
import { isSweepMarker, SWEEPS_PREFIX, sweepMarkerKey, type SweepMarker } from "../../common/bucket-layout.ts";
import type { Logger } from "../log.ts";
import type { ListedObject } from "../s3/xml.ts";

/** A build's records land within this long of its last look at the sweep markers (else it checks again). */
export const PUBLISH_WINDOW_MS = 2_000;
/** A collection waits this long between putting its marker and listing the images: more than PUBLISH_WINDOW_MS. */
export const SWEEP_SETTLE_MS = 2 * PUBLISH_WINDOW_MS + 1_000;
/** A collection stops deleting this long after it started; the rest is left to the next run. */
export const SWEEP_MAX_MS = 15 * 60_000;
/** Clocks of builders and collections may differ by this much: a marker is waited for this long past its expiry. */
const CLOCK_SLACK_MS = 60_000;
/** How often a waiting build looks at the markers again. */
const WAIT_POLL_MS = 1_000;

/** The bucket as the protocol uses it (the builder's S3 store). */
export interface SweepBucket {
  listObjects(prefix: string): AsyncIterable<ListedObject>;
  getObject(key: string): Promise<Uint8Array | null>;
  putObject(key: string, bytes: Uint8Array, contentType: string): Promise<void>;
  deleteObjects(keys: readonly string[]): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The markers of collections that may be deleting now. */
export async function liveSweeps(bucket: SweepBucket, nowMs = Date.now()): Promise<SweepMarker[]> {
  const live: SweepMarker[] = [];
  for await (const object of bucket.listObjects(SWEEPS_PREFIX)) {
    const bytes = await bucket.getObject(object.key);
    let marker: unknown = null;
    try {
      marker = bytes ? (JSON.parse(new TextDecoder().decode(bytes)) as unknown) : null;
    } catch {
      // An unreadable marker: judged by when it was written, with the longest a collection may run.
    }
    const expiresMs = isSweepMarker(marker) ? Date.parse(marker.expiresAt) : object.lastModifiedMs + SWEEP_MAX_MS;
    if (bytes && nowMs < expiresMs + CLOCK_SLACK_MS) {
      live.push(
        isSweepMarker(marker)
          ? marker
          : { startedAt: new Date(object.lastModifiedMs).toISOString(), expiresAt: new Date(expiresMs).toISOString() },
      );
    }
  }
  return live;
}

/** A collection's hold on the bucket: put before it lists anything, removed when it has finished deleting. */
export interface Sweep {
  /** Whether deleting may go on (false once the marker's expiry is near). */
  mayDelete(): boolean;
  end(): Promise<void>;
}

export async function beginSweep(bucket: SweepBucket): Promise<Sweep> {
  const startedMs = Date.now();
  const key = sweepMarkerKey(`${new Date(startedMs).toISOString().replace(/[:.]/g, "-")}-${randomUUID()}`);
  const marker: SweepMarker = {
    startedAt: new Date(startedMs).toISOString(),
    expiresAt: new Date(startedMs + SWEEP_MAX_MS).toISOString(),
  };
  await bucket.putObject(key, new TextEncoder().encode(JSON.stringify(marker)), "application/json");
  await sleep(SWEEP_SETTLE_MS);
  return {
    // A delete sent now must land before the expiry: a minute of margin, as for clocks.
    mayDelete: () => Date.now() < startedMs + SWEEP_MAX_MS - CLOCK_SLACK_MS,
    end: () => bucket.deleteObjects([key]),
  };
}

/** Rounds of checks that ran out of time before a build gives up publishing (each takes SWEEP_SETTLE_MS or more). */
const MAX_SLOW_ROUNDS = 20;

/**
 * Publishes a built image (steps a to e above): ensureStored checks every object the image names and uploads
 * again what is missing, returning what it uploaded; write writes the records. Returns the re-uploaded keys.
 */
export async function publishImage(
  bucket: SweepBucket,
  log: Logger,
  imageKey: string,
  ensureStored: () => Promise<string[]>,
  write: () => Promise<void>,
): Promise<string[]> {
  const repaired: string[] = [];
  let waits = 0;
  let slowRounds = 0;
  const waitFor = async (sweeps: SweepMarker[]) => {
    if (waits++ % 30 === 0) log.info("gc-wait", { imageKey, sweeps: sweeps.map((sweep) => sweep.startedAt) });
    await sleep(WAIT_POLL_MS);
  };
  for (;;) {
    const firstCheckMs = performance.now();
    const before = await liveSweeps(bucket);
    if (before.length > 0) {
      await waitFor(before);
      continue;
    }
    const uploaded = await ensureStored();
    repaired.push(...uploaded);
    if (uploaded.length > 0) log.warn("publish-reupload", { imageKey, keys: uploaded });
    const secondCheckMs = performance.now();
    const during = await liveSweeps(bucket);
    if (during.length > 0) {
      await waitFor(during);
      continue;
    }
    if (performance.now() - firstCheckMs >= SWEEP_SETTLE_MS) {
      // A collection may have started and ended between the two looks: look again.
      if (++slowRounds >= MAX_SLOW_ROUNDS) {
        throw new Error(
          `checking that the image's objects are in the bucket took longer than ${SWEEP_SETTLE_MS} ms ${slowRounds} times in a row; the bucket is too slow to publish the image safely`,
        );
      }
      continue;
    }
    await write();
    const tookMs = performance.now() - secondCheckMs;
    if (tookMs <= PUBLISH_WINDOW_MS) return repaired;
    // The records may have landed after a collection listed the images: check again, and repair what it took.
    log.warn("publish-slow", { imageKey, ms: Math.round(tookMs), windowMs: PUBLISH_WINDOW_MS });
  }
}
