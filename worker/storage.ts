// The worker's view of the R2 bucket (layout and writers: common/bucket-layout.ts), behind a small interface. The
// worker reads what the builder wrote (blobs, manifests, image and job records) and writes only what it alone
// decides: tag resolutions, tag markers and pull markers.
import {
  blobKey,
  imageKeyOfRecentJob,
  imageRecordKey,
  isImageRecord,
  isJobRecord,
  isStoredResolution,
  jobRecordKey,
  manifestKey,
  pullMarkerKey,
  RECENT_JOBS_PREFIX,
  resolutionKey,
  tagMarkerKey,
  tagMarkerPrefix,
  type ImageRecord,
  type JobRecord,
  type StoredResolution,
} from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";

export { isStoredResolution, type ImageRecord, type StoredResolution };

export interface ObjectInfo {
  size: number;
  contentType: string | undefined;
}

export interface StoredBlob extends ObjectInfo {
  body: ReadableStream;
}

export interface StoredManifest {
  mediaType: string | undefined;
  bytes: Uint8Array;
}

export interface RegistryStorage {
  headBlob(hex: string): Promise<ObjectInfo | null>;
  /** The blob's bytes, or the slice [offset, offset+length) of them; size is always the whole blob's. */
  getBlob(hex: string, range?: { offset: number; length: number }): Promise<StoredBlob | null>;

  headManifest(hex: string): Promise<ObjectInfo | null>;
  getManifest(hex: string): Promise<StoredManifest | null>;

  getImage(key: string): Promise<ImageRecord | null>;
  getJob(key: string): Promise<JobRecord | null>;
  /** Image keys of the most recently started jobs, newest first. */
  recentJobs(limit: number): Promise<string[]>;

  getResolution(tag: string): Promise<StoredResolution | null>;
  putResolution(tag: string, resolution: StoredResolution): Promise<void>;

  hasTagMarker(name: string, tag: string): Promise<boolean>;
  putTagMarker(name: string, tag: string): Promise<void>;
  /** Tags with a marker for exactly this repository name (not for longer names under it). */
  listTagMarkers(name: string): Promise<string[]>;

  /** Records that the image was pulled now (its marker's last-modified time; the garbage collection reads it). */
  putPullMarker(imageKey: string): Promise<void>;
}

const digestOf = (hex: string): Digest => `sha256:${hex}`;

/** An R2 failure, naming the operation and key so a 500 says what failed. */
class StorageError extends Error {
  constructor(operation: string, key: string, cause: unknown) {
    super(`R2 ${operation} of ${key} failed: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = "StorageError";
  }
}

async function attempt<T>(operation: string, key: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw new StorageError(operation, key, error);
  }
}

async function readJson(bucket: R2Bucket, key: string): Promise<unknown> {
  const object = await attempt("get", key, () => bucket.get(key));
  if (!object) return null;
  const text = await attempt("read", key, () => object.text());
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // A corrupt record is treated as absent; the next write replaces it.
    console.warn(`ignoring unparsable JSON in R2 object ${key}`);
    return null;
  }
}

const JSON_METADATA = { httpMetadata: { contentType: "application/json" } };

export function r2Storage(bucket: R2Bucket): RegistryStorage {
  return {
    async headBlob(hex) {
      const key = blobKey(digestOf(hex));
      const object = await attempt("head", key, () => bucket.head(key));
      return object ? { size: object.size, contentType: object.httpMetadata?.contentType } : null;
    },

    async getBlob(hex, range) {
      const key = blobKey(digestOf(hex));
      const object = await attempt("get", key, () => (range ? bucket.get(key, { range }) : bucket.get(key)));
      if (!object) return null;
      return { size: object.size, contentType: object.httpMetadata?.contentType, body: object.body };
    },

    async headManifest(hex) {
      const key = manifestKey(digestOf(hex));
      const object = await attempt("head", key, () => bucket.head(key));
      return object ? { size: object.size, contentType: object.httpMetadata?.contentType } : null;
    },

    async getManifest(hex) {
      const key = manifestKey(digestOf(hex));
      const object = await attempt("get", key, () => bucket.get(key));
      if (!object) return null;
      const bytes = new Uint8Array(await attempt("read", key, () => object.arrayBuffer()));
      return { mediaType: object.httpMetadata?.contentType, bytes };
    },

    async getImage(imageKey) {
      const value = await readJson(bucket, imageRecordKey(imageKey));
      return isImageRecord(value) ? value : null;
    },

    async getJob(imageKey) {
      const value = await readJson(bucket, jobRecordKey(imageKey));
      return isJobRecord(value) ? value : null;
    },

    async recentJobs(limit) {
      const page: R2Objects = await attempt("list", RECENT_JOBS_PREFIX, () =>
        bucket.list({ prefix: RECENT_JOBS_PREFIX, limit }),
      );
      const keys = page.objects
        .map((object) => imageKeyOfRecentJob(object.key))
        .filter((key): key is string => key !== null);
      return [...new Set(keys)];
    },

    async getResolution(tag) {
      const value = await readJson(bucket, resolutionKey(tag));
      return isStoredResolution(value) ? value : null;
    },

    async putResolution(tag, resolution) {
      const key = resolutionKey(tag);
      await attempt("put", key, () => bucket.put(key, JSON.stringify(resolution), JSON_METADATA));
    },

    async hasTagMarker(name, tag) {
      const key = tagMarkerKey(name, tag);
      return (await attempt("head", key, () => bucket.head(key))) !== null;
    },

    async putTagMarker(name, tag) {
      const key = tagMarkerKey(name, tag);
      await attempt("put", key, () => bucket.put(key, ""));
    },

    async putPullMarker(imageKey) {
      const key = pullMarkerKey(imageKey);
      await attempt("put", key, () => bucket.put(key, ""));
    },

    async listTagMarkers(name) {
      const prefix = tagMarkerPrefix(name);
      const tags: string[] = [];
      let cursor: string | undefined;
      do {
        const page: R2Objects = await attempt("list", prefix, () =>
          bucket.list({ prefix, delimiter: "/", cursor, limit: 1000 }),
        );
        for (const object of page.objects) tags.push(object.key.slice(prefix.length));
        cursor = page.truncated ? page.cursor : undefined;
      } while (cursor);
      return tags;
    },
  };
}
