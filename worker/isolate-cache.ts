// An in-memory layer over the registry's storage for what never changes once written: manifests (content-addressed)
// and image records (keyed by a hash of their inputs). A warm manifest pull then costs no R2 read at all, where it
// would otherwise wait on two in a row; at the edge each is a round trip to the bucket's region.
//
// Memory lives as long as the isolate and is bounded; blobs and everything mutable (tags, markers) pass through.
import { LruMap } from "../common/lru-map.ts";
import type { ImageRecord, ObjectInfo, RegistryStorage, StoredManifest } from "./storage.ts";

/** Manifests are a few KiB each: 512 of them stay well under a megabyte or two of an isolate's 128 MB. */
const manifests = new LruMap<string, StoredManifest>(512);
const images = new LruMap<string, ImageRecord>(1024);

/** Bytes this layer hands out are shared between requests: callers get their own copy. */
const copyOf = (manifest: StoredManifest): StoredManifest => ({
  mediaType: manifest.mediaType,
  bytes: manifest.bytes.slice(),
});

export function isolateCached(inner: RegistryStorage): RegistryStorage {
  return {
    ...inner,

    async headManifest(hex): Promise<ObjectInfo | null> {
      const known = manifests.get(hex);
      if (known) return { size: known.bytes.byteLength, contentType: known.mediaType };
      return inner.headManifest(hex);
    },

    async getManifest(hex) {
      const known = manifests.get(hex);
      if (known) return copyOf(known);
      const stored = await inner.getManifest(hex);
      if (stored) manifests.set(hex, copyOf(stored));
      return stored;
    },

    async getImage(key) {
      const known = images.get(key);
      if (known) return known;
      const record = await inner.getImage(key);
      if (record) images.set(key, record);
      return record;
    },
  };
}
