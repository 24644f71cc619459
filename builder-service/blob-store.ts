// Where the builder keeps what it makes: content-addressed blobs (layers, configs, manifests) and small
// records (layer and image caches). One file per implementation: local-store.ts (a folder, the embedded
// default) and, for production, an S3/R2 store.
import type { Readable, Writable } from "node:stream";
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
  readonly sink: Writable;
  commit(digest: Digest, size: number): Promise<void>;
  abort(): Promise<void>;
}

export interface BlobStore {
  /** A short description for logs, e.g. "local folder /var/lib/...". */
  readonly description: string;
  stat(digest: Digest): Promise<BlobInfo | null>;
  read(digest: Digest, range?: ByteRange): Promise<Readable | null>;
  stage(): Promise<StagedBlob>;
  /** Stores a small blob whose bytes are in hand (configs, manifests). */
  putBytes(digest: Digest, bytes: Uint8Array): Promise<void>;
  getRecord(name: string): Promise<Uint8Array | null>;
  putRecord(name: string, bytes: Uint8Array): Promise<void>;
}

/** Record names are built by the builder from hashes; this keeps a bug from turning one into a path escape. */
export function assertRecordName(name: string): void {
  if (!/^[a-z0-9-]+\/[a-zA-Z0-9._-]+$/.test(name)) throw new Error(`invalid record name "${name}"`);
}
