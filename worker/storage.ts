// The worker's view of the R2 bucket, behind a small interface so the layout lives in one place.
//
// R2 layout (one bucket, shared with the builder, which writes blobs/ directly in production):
//
//   blobs/sha256/<hex>          layer and config blobs; httpMetadata.contentType set.
//   manifests/sha256/<hex>      manifest bytes exactly as digested; httpMetadata.contentType = the manifest's mediaType.
//   images/<imageKey>.json      {"oci": "<digest>", "docker": "<digest>", "revision": "...", "builtAt": "<ISO time>"}.
//                               Written only after both manifests are stored, so a record never points at nothing.
//   resolutions/<tag>.json      the builder's ResolveResult plus "fetchedAt" (ISO time); reused until ttlSeconds
//                               expire (ttlSeconds 0 = forever).
//   tags/<repository name>/<tag>  an empty marker per tag served for a name (feeds tags/list). Tags hold no '/',
//                               so listing with delimiter '/' separates "shell" from "shell/hello".
//
// Everything is content-addressed or keyed by an image key that is itself a hash of its inputs, so writes are
// idempotent and concurrent writers of the same key write the same bytes.
import type { ResolveResult } from "../common/builder-api.ts";
import { isDigest, type Digest } from "../common/digest.ts";

export interface ImageRecord {
  oci: Digest;
  docker: Digest;
  revision: string;
  builtAt: string;
}

export interface StoredResolution extends ResolveResult {
  /** When the worker got this answer from the builder (ISO time). */
  fetchedAt: string;
}

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
  /** body must have a known length (a FixedLengthStream's readable side); R2 checks the sha256 before it commits. */
  putBlob(hex: string, body: ReadableStream, contentType: string): Promise<void>;

  headManifest(hex: string): Promise<ObjectInfo | null>;
  getManifest(hex: string): Promise<StoredManifest | null>;
  putManifest(hex: string, body: string, mediaType: string): Promise<void>;

  getImage(key: string): Promise<ImageRecord | null>;
  putImage(key: string, record: ImageRecord): Promise<void>;

  getResolution(tag: string): Promise<StoredResolution | null>;
  putResolution(tag: string, resolution: StoredResolution): Promise<void>;

  hasTagMarker(name: string, tag: string): Promise<boolean>;
  putTagMarker(name: string, tag: string): Promise<void>;
  /** Tags with a marker for exactly this repository name (not for longer names under it). */
  listTagMarkers(name: string): Promise<string[]>;
}

export const blobKey = (hex: string): string => `blobs/sha256/${hex}`;
export const manifestKey = (hex: string): string => `manifests/sha256/${hex}`;
export const imageRecordKey = (imageKey: string): string => `images/${imageKey}.json`;
export const resolutionKey = (tag: string): string => `resolutions/${tag}.json`;
export const tagMarkerPrefix = (name: string): string => `tags/${name}/`;
export const tagMarkerKey = (name: string, tag: string): string => `${tagMarkerPrefix(name)}${tag}`;

/** An R2 failure, naming the operation and key so a 500 says what failed. */
export class StorageError extends Error {
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

function isImageRecord(value: unknown): value is ImageRecord {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.oci === "string" && isDigest(v.oci) &&
    typeof v.docker === "string" && isDigest(v.docker) &&
    typeof v.revision === "string" && typeof v.builtAt === "string"
  );
}

function isStoredResolution(value: unknown): value is StoredResolution {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.revision === "string" && typeof v.source === "string" &&
    typeof v.ttlSeconds === "number" && typeof v.fetchedAt === "string"
  );
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
      const key = blobKey(hex);
      const object = await attempt("head", key, () => bucket.head(key));
      return object ? { size: object.size, contentType: object.httpMetadata?.contentType } : null;
    },

    async getBlob(hex, range) {
      const key = blobKey(hex);
      const object = await attempt("get", key, () => (range ? bucket.get(key, { range }) : bucket.get(key)));
      if (!object) return null;
      return { size: object.size, contentType: object.httpMetadata?.contentType, body: object.body };
    },

    async putBlob(hex, body, contentType) {
      const key = blobKey(hex);
      await attempt("put", key, () => bucket.put(key, body, { httpMetadata: { contentType }, sha256: hex }));
    },

    async headManifest(hex) {
      const key = manifestKey(hex);
      const object = await attempt("head", key, () => bucket.head(key));
      return object ? { size: object.size, contentType: object.httpMetadata?.contentType } : null;
    },

    async getManifest(hex) {
      const key = manifestKey(hex);
      const object = await attempt("get", key, () => bucket.get(key));
      if (!object) return null;
      const bytes = new Uint8Array(await attempt("read", key, () => object.arrayBuffer()));
      return { mediaType: object.httpMetadata?.contentType, bytes };
    },

    async putManifest(hex, body, mediaType) {
      const key = manifestKey(hex);
      await attempt("put", key, () => bucket.put(key, body, { httpMetadata: { contentType: mediaType }, sha256: hex }));
    },

    async getImage(imageKey) {
      const value = await readJson(bucket, imageRecordKey(imageKey));
      return isImageRecord(value) ? value : null;
    },

    async putImage(imageKey, record) {
      const key = imageRecordKey(imageKey);
      await attempt("put", key, () => bucket.put(key, JSON.stringify(record), JSON_METADATA));
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
