// Where the builder puts what it makes: the registry's bucket (layout: common/bucket-layout.ts), through the S3 API
// (s3/store.ts) both in production (R2) and in the local stack (its local R2, behind scripts/local-s3-endpoint/).
import type { Writable } from "node:stream";
import type { Digest } from "../common/digest.ts";

export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive. */
  end: number;
}

export interface BlobInfo {
  size: number;
}

/**
 * A blob being written whose digest is known only once its bytes have all gone through.
 * Nothing is visible under a digest until commit; abort throws the partial bytes away.
 */
export interface StagedBlob {
  /** Where the bytes go. The store hashes them on the way: the one sha256 of those bytes the builder computes. */
  readonly sink: Writable;
  /** The digest and size of what the sink took, once it has finished (the layer pipeline's digest). */
  written(): { digest: Digest; size: number };
  /** Stores the bytes under the digest; refuses, uploading nothing, unless they hash to it and number size. */
  commit(digest: Digest, size: number): Promise<void>;
  abort(): Promise<void>;
}

export interface BlobStore {
  /** A short description for logs, e.g. "S3 bucket registry at https://...". */
  readonly description: string;
  stat(digest: Digest): Promise<BlobInfo | null>;
  stage(): Promise<StagedBlob>;
  /** Stores a small blob whose bytes are in hand (an image config). */
  putBytes(digest: Digest, bytes: Uint8Array): Promise<void>;
  putManifest(digest: Digest, body: string, mediaType: string): Promise<void>;
  /** A small object (a record) by its bucket key, or null when there is none. */
  getObject(key: string): Promise<Uint8Array | null>;
  /** Writes a small object under a key the builder owns (see assertBuilderWritable). */
  putObject(key: string, bytes: Uint8Array, contentType: string): Promise<void>;
}

const BUILDER_WRITES =
  /^(images\/[0-9a-f]{64}\.json|jobs\/[0-9a-f]{64}\.json|recent-jobs\/\d{13}-[0-9a-f]{64}|builder-cache\/[a-z0-9-]+\/[a-zA-Z0-9._-]+|builder-cache\/startup-check|gc\/sweeps\/[A-Za-z0-9-]+\.json)$/;

/** The builder writes only its own records (common/bucket-layout.ts): never the worker's resolutions/ or tags/. */
export function assertBuilderWritable(key: string): void {
  if (!BUILDER_WRITES.test(key))
    throw new Error(`the builder does not write "${key}": not one of its keys in common/bucket-layout.ts`);
}

/**
 * The garbage collection deletes only what the builder writes, and the worker's pull markers of images gone
 * (common/bucket-layout.ts): never resolutions or tag markers.
 */
export function assertDeletable(key: string): void {
  if (
    !BUILDER_WRITES.test(key) &&
    !/^(blobs|manifests)\/sha256\/[0-9a-f]{64}$/.test(key) &&
    !/^pulls\/[0-9a-f]{64}$/.test(key)
  )
    throw new Error(`the builder does not delete "${key}": not one of the keys its garbage collection removes`);
}

/** A JSON record by key, or null when absent or unreadable (a corrupt record is rewritten by the next write). */
export async function getJson(store: BlobStore, key: string): Promise<unknown> {
  const bytes = await store.getObject(key);
  if (!bytes) return null;
  try {
    return JSON.parse(new TextDecoder().decode(bytes)) as unknown;
  } catch {
    return null;
  }
}

export function putJson(store: BlobStore, key: string, value: unknown): Promise<void> {
  return store.putObject(key, new TextEncoder().encode(JSON.stringify(value)), "application/json");
}
