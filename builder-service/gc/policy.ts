// What is garbage in the registry's bucket: the policy of the garbage collection, pure (no I/O, the time given), so
// that it is tested on its own (test/gc-units.test.ts). collect.ts reads the bucket, asks these functions, deletes.
//
// An image record is the root of everything else (common/bucket-layout.ts). The policy decides in two steps:
//   1. which image records stay (judgeImages): the current revision of every moving tag, pinned commits (unless
//      configured otherwise), and old revisions until they are both old enough and unpulled for long enough;
//   2. which other objects stay (judgeObjects): manifests and blobs the kept images reference; layer records whose
//      blob stays; job records, recent-job markers and pull markers of kept images and of running jobs (a build
//      takes longer than the grace period now and then). Anything else of those kinds
//      goes once it is older than the grace period (a build in progress uploads its layers before it writes its
//      image record). Resolutions, tag markers, sweep markers and keys of no known kind are never removed.
import {
  blobKey,
  BUILDER_CACHE_PREFIX,
  imageKeyOfPullMarker,
  imageKeyOfRecentJob,
  isFinished,
  manifestKey,
  type ImageRecord,
  type JobRecord,
  type StoredResolution,
} from "../../common/bucket-layout.ts";
import type { Digest } from "../../common/digest.ts";
import type { ListedObject } from "../s3/xml.ts";

export type { ListedObject };

export interface GcSettings {
  /** Objects younger than this are never removed (except layer records of blobs removed now). */
  graceMs: number;
  /** An old revision's image goes once built at least this long ago... */
  oldRevisionKeepMs: number;
  /** ...and not pulled for at least this long. */
  oldRevisionUnpulledMs: number;
  /** Images of commits pulled by their commit stay; false: they expire like old revisions. */
  keepPinned: boolean;
}

export interface Verdict {
  key: string;
  size: number;
  remove: boolean;
  /** Why, in a few words (the dry run lists it). */
  why: string;
}

const DAY_MS = 86_400_000;
const days = (ms: number) => `${Math.floor(ms / DAY_MS)} d ${Math.floor((ms % DAY_MS) / 3_600_000)} h`;

export const IMAGES_PREFIX = "images/";
const IMAGE_RECORD = /^images\/([0-9a-f]{64})\.json$/;
export const JOB_RECORD = /^jobs\/([0-9a-f]{64})\.json$/;
const LAYER_RECORDS_PREFIX = `${BUILDER_CACHE_PREFIX}layers/`;

export const imageKeyOfRecord = (key: string): string | null => IMAGE_RECORD.exec(key)?.[1] ?? null;

/** The revisions moving tags resolve to now, and the commits pulled by their commit (resolutions/ records). */
export function revisionsOf(resolutions: readonly StoredResolution[]): { current: Set<string>; pinned: Set<string> } {
  const current = new Set<string>();
  const pinned = new Set<string>();
  for (const resolution of resolutions) (resolution.ttlSeconds === 0 ? pinned : current).add(resolution.revision);
  return { current, pinned };
}

export interface ImageFacts {
  /** The images/<key>.json object as listed. */
  object: ListedObject;
  /** Its record, or null when it can't be read. */
  record: ImageRecord | null;
  /** When the image was last pulled (its pull marker), if ever. */
  lastPullMs: number | null;
}

/** Step 1: which image records stay, by their object key. */
export function judgeImages(
  images: readonly ImageFacts[],
  revisions: { current: Set<string>; pinned: Set<string> },
  settings: GcSettings,
  nowMs: number,
): Verdict[] {
  return images.map(({ object, record, lastPullMs }) => {
    const verdict = (remove: boolean, why: string): Verdict => ({ key: object.key, size: object.size, remove, why });
    const age = nowMs - object.lastModifiedMs;
    if (record === null) {
      return age < settings.graceMs
        ? verdict(false, "unreadable, within the grace period")
        : verdict(true, "unreadable image record");
    }
    if (revisions.current.has(record.revision)) return verdict(false, "a moving tag's current revision");
    if (settings.keepPinned && revisions.pinned.has(record.revision)) return verdict(false, "a pinned commit");
    const built = Date.parse(record.builtAt);
    const builtMs = Number.isNaN(built) ? object.lastModifiedMs : built;
    const pulledMs = Math.max(builtMs, lastPullMs ?? 0);
    const what = revisions.pinned.has(record.revision) ? "pinned commit" : "old revision";
    const timing = `built ${days(nowMs - builtMs)} ago, last pulled ${days(nowMs - pulledMs)} ago`;
    if (nowMs - builtMs >= settings.oldRevisionKeepMs && nowMs - pulledMs >= settings.oldRevisionUnpulledMs)
      return verdict(true, `${what}, ${timing}`);
    return verdict(false, `${what}, ${timing}: not yet expired`);
  });
}

/** The manifests/ and blobs/ keys the kept images reference: their manifests, and each manifest's config and layers. */
export function referencedKeys(
  keptRecords: readonly ImageRecord[],
  manifests: ReadonlyMap<Digest, { config: Digest; layers: Digest[] } | null>,
): Set<string> {
  const keys = new Set<string>();
  for (const record of keptRecords) {
    for (const digest of [record.oci, record.docker]) {
      keys.add(manifestKey(digest));
      const manifest = manifests.get(digest);
      if (!manifest) continue;
      keys.add(blobKey(manifest.config));
      for (const layer of manifest.layers) keys.add(blobKey(layer));
    }
  }
  return keys;
}

export interface ObjectFacts {
  nowMs: number;
  /** Every object listed, image records included. */
  objects: readonly ListedObject[];
  /** Step 1's verdicts on the image records. */
  images: readonly Verdict[];
  /** What the kept images reference (referencedKeys). */
  referenced: ReadonlySet<string>;
  /** The blob digest each builder-cache/layers/ record names, null when it can't be read. */
  layerRecords: ReadonlyMap<string, Digest | null>;
  /** Image keys whose job runs now (isRunningJob): their records and markers stay whatever the grace period. */
  runningJobs: ReadonlySet<string>;
}

/** A job record that is unfinished and was rewritten lately (a running job rewrites it every few seconds). */
export function isRunningJob(record: JobRecord, nowMs: number): boolean {
  const updated = Date.parse(record.updatedAt);
  return !isFinished(record.phase) && !Number.isNaN(updated) && nowMs - updated < 10 * record.heartbeatSeconds * 1000;
}

/** Step 2: a verdict on every listed object. */
export function judgeObjects(facts: ObjectFacts, settings: GcSettings): Verdict[] {
  const { nowMs, referenced } = facts;
  const imageVerdicts = new Map(facts.images.map((verdict) => [verdict.key, verdict]));
  const keptImages = new Set(
    facts.images.filter((verdict) => !verdict.remove).map((verdict) => imageKeyOfRecord(verdict.key)),
  );
  const listed = new Set(facts.objects.map((object) => object.key));
  const verdicts: Verdict[] = [];
  const removedBlobs = new Set<string>();
  const later: ListedObject[] = [];
  const judge = (object: ListedObject, remove: boolean, why: string) =>
    verdicts.push({ key: object.key, size: object.size, remove, why });

  for (const object of facts.objects) {
    const young = nowMs - object.lastModifiedMs < settings.graceMs;
    const image = imageVerdicts.get(object.key);
    if (image) {
      verdicts.push(image);
    } else if (object.key.startsWith("blobs/") || object.key.startsWith("manifests/")) {
      if (referenced.has(object.key)) judge(object, false, "referenced by a kept image");
      else if (young) judge(object, false, "referenced by no image, within the grace period");
      else {
        judge(object, true, "referenced by no kept image");
        if (object.key.startsWith("blobs/")) removedBlobs.add(object.key);
      }
    } else if (object.key.startsWith(LAYER_RECORDS_PREFIX)) {
      later.push(object); // once every blob is judged
    } else {
      const imageKey =
        JOB_RECORD.exec(object.key)?.[1] ?? imageKeyOfRecentJob(object.key) ?? imageKeyOfPullMarker(object.key);
      if (imageKey === undefined || imageKey === null) judge(object, false, "not a kind the collection removes");
      else if (keptImages.has(imageKey)) judge(object, false, "its image is kept");
      else if (facts.runningJobs.has(imageKey)) judge(object, false, "its image's job is running");
      else if (young) judge(object, false, "no image record, within the grace period");
      else judge(object, true, "its image has no record");
    }
  }
  for (const object of later) {
    const young = nowMs - object.lastModifiedMs < settings.graceMs;
    const digest = facts.layerRecords.get(object.key);
    if (digest && removedBlobs.has(blobKey(digest))) judge(object, true, "its blob is removed");
    else if (young) judge(object, false, "within the grace period");
    else if (!digest) judge(object, true, "unreadable layer record");
    else if (!listed.has(blobKey(digest))) judge(object, true, "its blob is not in the bucket");
    else judge(object, false, "its blob is kept");
  }
  return verdicts;
}

/**
 * The order removals are made in: image records first, so that no record ever points at something gone; then what
 * belongs to images (jobs, markers), manifests, layer records (so that no build finds a record of a blob being
 * removed), and blobs last.
 */
export function removalOrder(key: string): number {
  if (key.startsWith(IMAGES_PREFIX)) return 0;
  if (key.startsWith("manifests/")) return 2;
  if (key.startsWith(LAYER_RECORDS_PREFIX)) return 3;
  if (key.startsWith("blobs/")) return 4;
  return 1;
}
