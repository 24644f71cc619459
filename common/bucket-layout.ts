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
//
// Everything the builder writes is content-addressed or keyed by an image key, itself a hash of everything that
// decides the image's bytes (common/image-key.ts): writes are idempotent, and two builders of one image write the
// same bytes.
import type { BuildRequest } from "./builder-api.ts";
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

/** images/<imageKey>.json: the image exists, and these are its manifests. */
export interface ImageRecord {
  oci: Digest;
  docker: Digest;
  /** The package-set revision it was built from. */
  revision: string;
  builtAt: string;
}

export function isImageRecord(value: unknown): value is ImageRecord {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.oci === "string" && isDigest(v.oci) &&
    typeof v.docker === "string" && isDigest(v.docker) &&
    typeof v.revision === "string" && typeof v.builtAt === "string"
  );
}

/** A build job's phases, in the order a successful job passes them. */
export const JOB_PHASES = ["queued", "evaluating", "building", "layering", "uploading", "done", "failed"] as const;
export type JobPhase = (typeof JOB_PHASES)[number];

export const isFinished = (phase: JobPhase): boolean => phase === "done" || phase === "failed";

export interface Count {
  done: number;
  total: number;
}

export interface JobProgress {
  /** Derivations built here (not fetched). */
  derivations?: Count;
  /** Store paths fetched from substituters, and the download size Nix announced for them. */
  fetched?: Count & { downloadBytes: number };
  /** Layers tarred and compressed (reused layers count as done). */
  layers?: Count;
  /** Bytes of new blobs uploaded to the bucket, of those written so far. */
  upload?: Count;
}

/** Why a job failed, as the registry error a pull of the image gets. */
export interface JobError {
  status: number;
  code: RegistryErrorCode;
  message: string;
  detail?: unknown;
}

/** jobs/<imageKey>.json: the image's latest build job, rewritten as it goes. */
export interface JobRecord {
  imageKey: string;
  /** Chosen by whoever asked for the build; a new job of the same image gets a new id. */
  jobId: string;
  request: BuildRequest;
  phase: JobPhase;
  /** Every phase entered so far, with when. */
  phases: { phase: JobPhase; at: string }[];
  progress: JobProgress;
  startedAt: string;
  updatedAt: string;
  /** While running, the record is rewritten at least this often: a record older than a few of these is stale. */
  heartbeatSeconds: number;
  /** Set when phase is "failed". */
  error?: JobError;
  /** Set when phase is "done". */
  image?: ImageRecord;
}

export function isJobRecord(value: unknown): value is JobRecord {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.imageKey === "string" &&
    typeof v.jobId === "string" &&
    typeof v.phase === "string" && (JOB_PHASES as readonly string[]).includes(v.phase) &&
    Array.isArray(v.phases) &&
    typeof v.progress === "object" && v.progress !== null &&
    typeof v.request === "object" && v.request !== null &&
    typeof v.startedAt === "string" && typeof v.updatedAt === "string" &&
    typeof v.heartbeatSeconds === "number"
  );
}
