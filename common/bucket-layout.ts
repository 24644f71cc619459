// The registry's bucket, written down once: every object key, who writes it, and the records' shapes. The worker
// reads it through the R2 binding (worker/storage.ts), the builder writes it through the S3 API
// (builder-service/s3-store.ts).
//
//   key                               writer    what
//   blobs/sha256/<hex>                builder   layers and image configs
//   manifests/sha256/<hex>            builder   manifest bytes exactly as digested; Content-Type = the media type
//   images/<imageKey>.json            builder   ImageRecord: the image exists. Written last, after its blobs and
//                                               manifests, so a record never points at nothing
//   jobs/<imageKey>.json              builder   JobRecord: the latest build job of the image and its progress
//   recent-jobs/<inverted ms>-<imageKey>  builder   an empty marker per job started; listing the prefix gives the
//                                               newest jobs first (see recentJobKey)
//   builder-cache/<kind>/<id>         builder   the builders' own records (which layer holds which store paths),
//                                               shared by every builder on the bucket so none redoes a layer
//   resolutions/<tag>.json            worker    what a tag resolved to, and when (the worker's cache of /resolve)
//   tags/<repository name>/<tag>      worker    an empty marker per tag pulled for a name (feeds tags/list)
//   pulls/<imageKey>                  worker    an empty marker rewritten on a pull by tag, at most once a day per
//                                               isolate: its last-modified time is the image's last pull (to a day),
//                                               which the garbage collection reads
//   gc/sweeps/<run id>.json           builder   SweepMarker: a garbage collection is deleting; builds wait before
//                                               publishing an image (builder-service/gc/sweep-protocol.ts)
//
// The garbage collection (builder-service/gc/) deletes what no image record references, and the images, jobs and
// markers its policy says are gone; it is the one deleter, and deletes the worker's pull markers of images gone.
//
// The records are valibot schemas, their types the schemas' outputs: whoever reads a record checks it with the
// schema, so a record written by another version, or damaged, is treated as absent rather than trusted.
//
// Everything the builder writes is content-addressed or keyed by an image key, itself a hash of everything that
// decides the image's bytes (common/image-key.ts): writes are idempotent, and two builders of one image write the
// same bytes.
import * as v from "valibot";
import { BuildRequestSchema, ResolveResultSchema } from "./builder-api.ts";
import { isDigest, type Digest } from "./digest.ts";
import type { RegistryErrorCode } from "./registry-errors.ts";

const hexOf = (digest: Digest): string => digest.slice("sha256:".length);

export const blobKey = (digest: Digest): string => `blobs/sha256/${hexOf(digest)}`;
export const manifestKey = (digest: Digest): string => `manifests/sha256/${hexOf(digest)}`;
export const imageRecordKey = (imageKey: string): string => `images/${imageKey}.json`;
export const jobRecordKey = (imageKey: string): string => `jobs/${imageKey}.json`;
export const RECENT_JOBS_PREFIX = "recent-jobs/";
export const BUILDER_CACHE_PREFIX = "builder-cache/";
export const resolutionKey = (tag: string): string => `resolutions/${tag}.json`;
export const tagMarkerPrefix = (name: string): string => `tags/${name}/`;
export const tagMarkerKey = (name: string, tag: string): string => `${tagMarkerPrefix(name)}${tag}`;
export const PULLS_PREFIX = "pulls/";
export const pullMarkerKey = (imageKey: string): string => `${PULLS_PREFIX}${imageKey}`;
export const SWEEPS_PREFIX = "gc/sweeps/";
export const sweepMarkerKey = (runId: string): string => `${SWEEPS_PREFIX}${runId}.json`;

/** Large enough for any time before the year 2286, so that the inverted value keeps 13 digits. */
const MAX_MS = 9_999_999_999_999;

/** Newest first in a lexicographic listing: the marker's name starts with (MAX_MS - start time), zero-padded. */
export const recentJobKey = (imageKey: string, startedAtMs: number): string =>
  `${RECENT_JOBS_PREFIX}${String(MAX_MS - startedAtMs).padStart(13, "0")}-${imageKey}`;

/** The image key a recent-job marker names, or null for a key that is not one. */
export function imageKeyOfRecentJob(key: string): string | null {
  const match = /^recent-jobs\/\d{13}-([0-9a-f]{64})$/.exec(key);
  return match ? match[1] : null;
}

/** A record of the builders' own, e.g. builderCacheKey("layers", "<hash>.json"). */
export function builderCacheKey(kind: string, id: string): string {
  // Names are made by the builder from hashes; this keeps a bug from writing outside the prefix.
  if (!/^[a-z0-9-]+$/.test(kind) || !/^[a-zA-Z0-9._-]+$/.test(id) || id.startsWith(".")) {
    throw new Error(`invalid builder cache record name "${kind}/${id}"`);
  }
  return `${BUILDER_CACHE_PREFIX}${kind}/${id}`;
}

export const isImageKey = (value: string): boolean => /^[0-9a-f]{64}$/.test(value);

/** The image key a pull marker names, or null for a key that is not one. */
export function imageKeyOfPullMarker(key: string): string | null {
  const match = /^pulls\/([0-9a-f]{64})$/.exec(key);
  return match ? match[1] : null;
}

/** A "sha256:<64 hex>" digest. */
const DigestSchema = v.custom<Digest>((value) => typeof value === "string" && isDigest(value), "not a sha256 digest");

/** images/<imageKey>.json: the image exists, and these are its manifests. */
const ImageRecordSchema = v.object({
  oci: DigestSchema,
  docker: DigestSchema,
  /** The package-set revision it was built from. */
  revision: v.string(),
  builtAt: v.string(),
});
export type ImageRecord = v.InferOutput<typeof ImageRecordSchema>;

export const isImageRecord = (value: unknown): value is ImageRecord => v.is(ImageRecordSchema, value);

/**
 * builder-cache/layers/<hash>.json: the layer that holds a set of store paths (builder-service/image-builder.ts
 * names the set), so that no builder tars and uploads it again.
 */
const LayerRecordSchema = v.object({
  /** The compressed blob's digest, under blobs/. */
  digest: DigestSchema,
  /** The uncompressed tar's digest (the image config's diff id). */
  diffId: DigestSchema,
  /** The compressed blob's size in bytes. */
  size: v.number(),
});
export type LayerRecord = v.InferOutput<typeof LayerRecordSchema>;

export const isLayerRecord = (value: unknown): value is LayerRecord => v.is(LayerRecordSchema, value);

/** resolutions/<tag>.json: what the worker was told a tag resolved to (builder-api.ts ResolveResult), and when. */
const StoredResolutionSchema = v.object({
  ...ResolveResultSchema.entries,
  /** When the worker got this answer from the builder (ISO time). */
  fetchedAt: v.string(),
});
export type StoredResolution = v.InferOutput<typeof StoredResolutionSchema>;

export const isStoredResolution = (value: unknown): value is StoredResolution => v.is(StoredResolutionSchema, value);

/** A build job's phases, in the order a successful job passes them. */
const JOB_PHASES = ["queued", "evaluating", "building", "layering", "uploading", "done", "failed"] as const;
export type JobPhase = (typeof JOB_PHASES)[number];

export const isFinished = (phase: JobPhase): boolean => phase === "done" || phase === "failed";

const CountSchema = v.object({ done: v.number(), total: v.number() });
export type Count = v.InferOutput<typeof CountSchema>;

const JobProgressSchema = v.object({
  /** Derivations built here (not fetched). */
  derivations: v.optional(CountSchema),
  /** Store paths fetched from substituters, and the download size Nix announced for them. */
  fetched: v.optional(v.object({ ...CountSchema.entries, downloadBytes: v.number() })),
  /** Layers tarred and compressed (reused layers count as done). */
  layers: v.optional(CountSchema),
  /** Bytes of new blobs uploaded to the bucket, of those written so far. */
  upload: v.optional(CountSchema),
  /** The last lines of Nix's log while it builds (at most LOG_TAIL_LINES), for the build's page. */
  log: v.optional(v.array(v.string())),
});

/** Lines of Nix's log a running job's record carries, each cut to LOG_LINE_CHARS. */
export const LOG_TAIL_LINES = 20;
export const LOG_LINE_CHARS = 300;
export type JobProgress = v.InferOutput<typeof JobProgressSchema>;

/** Why a job failed, as the registry error a pull of the image gets. */
const JobErrorSchema = v.object({
  status: v.number(),
  // Any code: a worker relays what a newer builder says rather than refuse the record.
  code: v.custom<RegistryErrorCode>((value) => typeof value === "string"),
  message: v.string(),
  detail: v.optional(v.unknown()),
});
export type JobError = v.InferOutput<typeof JobErrorSchema>;

/** jobs/<imageKey>.json: the image's latest build job, rewritten as it goes. */
export const JobRecordSchema = v.object({
  imageKey: v.string(),
  /** Chosen by whoever asked for the build; a new job of the same image gets a new id. */
  jobId: v.string(),
  request: BuildRequestSchema,
  phase: v.picklist(JOB_PHASES),
  /** Every phase entered so far, with when. */
  phases: v.array(v.object({ phase: v.picklist(JOB_PHASES), at: v.string() })),
  progress: JobProgressSchema,
  startedAt: v.string(),
  updatedAt: v.string(),
  /** While running, the record is rewritten at least this often: a record older than a few of these is stale. */
  heartbeatSeconds: v.number(),
  /** Set when phase is "failed". */
  error: v.optional(JobErrorSchema),
  /** Set when phase is "done". */
  image: v.optional(ImageRecordSchema),
});
export type JobRecord = v.InferOutput<typeof JobRecordSchema>;

export const isJobRecord = (value: unknown): value is JobRecord => v.is(JobRecordSchema, value);

/** gc/sweeps/<run id>.json: a collection that may be deleting until expiresAt (ISO times). */
const SweepMarkerSchema = v.object({ startedAt: v.string(), expiresAt: v.string() });
export type SweepMarker = v.InferOutput<typeof SweepMarkerSchema>;

export const isSweepMarker = (value: unknown): value is SweepMarker => v.is(SweepMarkerSchema, value);
