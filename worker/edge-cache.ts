// A layer over the registry's storage that keeps what a pull reads in the cache of the Cloudflare location serving
// it (the Workers Cache API), so a pull far from the bucket's region pays the round trips to R2 once per location:
//
// - blobs and manifests, by digest: they never change, so they are kept as long as the location keeps them;
// - image records, by image key: written once, last, by the builder (common/bucket-layout.ts); a day at most, as
//   the garbage collection may remove them;
// - tag resolutions: kept only while they may be reused (resolutions.ts), so a moving tag moves on time.
//
// Keys are the bucket's own keys under the worker's origin, never the client's URL or headers, so every
// repository name and every client shares one entry per object. Job records, recent builds and tag markers change
// and pass through. The Cache API works on a custom domain; on workers.dev its calls do nothing (every read goes to
// R2, as without this layer).
//
// Longer than most files here: a blob's fill (streamed, given up, refilled, recorded) is one protocol, read as a
// whole.
import { blobKey, imageRecordKey, isImageRecord, manifestKey, resolutionKey } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import {
  isStoredResolution,
  type ImageRecord,
  type ObjectInfo,
  type RegistryStorage,
  type StoredBlob,
  type StoredManifest,
  type StoredResolution,
} from "./storage.ts";

/** Cloudflare's cache keeps objects up to 512 MB on the Free, Pro and Business plans (5 GB on Enterprise). */
export const DEFAULT_EDGE_CACHE_MAX_BYTES = 500 * 1000 * 1000;
/** How far the cache's copy of a streaming blob may fall behind the client's before it is given up on. */
const CACHE_LAG_BYTES = 16 * 1024 * 1024;
/** The named cache the registry keeps its objects in (apart from anything else cached on the zone). */
export const EDGE_CACHE_NAME = "nix-edge-registry";
const FOREVER = "public, max-age=31536000, immutable";
/**
 * An image record is never rewritten, but the garbage collection may remove it (builder-service/gc/): a location
 * keeps its copy a day at most, so a removed image is built again there rather than served without its blobs.
 */
const IMAGE_RECORD_LIFETIME = "public, max-age=86400";

export interface EdgeCacheOptions {
  cache: Cache;
  /** The worker's origin (scheme and host), under which cache keys are made. */
  origin: string;
  /** Keeps the cache writes going after the response is sent (ExecutionContext.waitUntil). */
  waitUntil: (promise: Promise<unknown>) => void;
  /** Larger blobs are streamed from R2 every time. */
  maxBytes: number;
  /** Seconds a resolution may still be reused from now: null for forever, 0 or less for not at all. */
  resolutionLifetime(resolution: StoredResolution): number | null;
}

const digestOf = (hex: string): Digest => `sha256:${hex}`;

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(hash, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** What a cached object says about itself; Content-Range's total for a ranged match. */
function infoOf(response: Response): ObjectInfo | null {
  const total =
    /\/(\d+)$/.exec(response.headers.get("Content-Range") ?? "")?.[1] ?? response.headers.get("Content-Length");
  if (total === null) return null;
  return { size: Number(total), contentType: response.headers.get("Content-Type") ?? undefined };
}

function cacheHeaders(size: number, contentType: string | undefined, cacheControl = FOREVER): Headers {
  const headers = new Headers({ "Cache-Control": cacheControl, "Content-Length": String(size) });
  if (contentType) headers.set("Content-Type", contentType);
  return headers;
}

/** What says a blob's bytes are all in the cache, and under which fill. */
interface BlobRecord {
  size: number;
  contentType: string | undefined;
  fill: string;
}

/** Blobs whose cache fill is under way in this isolate: a second ranged miss need not start another. */
const filling = new Set<string>();

export function edgeCached(inner: RegistryStorage, options: EdgeCacheOptions): RegistryStorage {
  const { cache, waitUntil } = options;
  const keyOf = (bucketKey: string) => `${options.origin}/.edge-cache/${bucketKey}`;

  const match = async (key: string, range?: { offset: number; length: number }): Promise<Response | null> => {
    try {
      const headers = range ? { Range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : undefined;
      const response = await cache.match(new Request(keyOf(key), { headers }));
      if (!response) return null;
      if (range && response.status !== 206) {
        // A cache that ignored the range: not what the caller can serve.
        await response.body?.cancel();
        return null;
      }
      return response;
    } catch (error) {
      console.warn(JSON.stringify({ event: "edge-cache-error", operation: "match", key, error: String(error) }));
      return null;
    }
  };

  /** Stores small bodies (manifests, records) after the response, never in its way. */
  const store = (key: string, body: Uint8Array | string, headers: Headers): void => {
    waitUntil(
      cache.put(keyOf(key), new Response(body, { headers })).catch((error: unknown) => {
        console.warn(JSON.stringify({ event: "edge-cache-error", operation: "put", key, error: String(error) }));
      }),
    );
  };

  /**
   * A blob is kept as two entries: its bytes under a key of their own for each fill, and, once every byte is in,
   * a small record naming that fill. A fill cut short (a client that hung up, an isolate that went away) leaves
   * bytes no record names: a cache may keep a partial body under the full length, so only the record says the
   * bytes are whole. Two fills of one blob at once write apart and the last record wins.
   */
  const fillKeyOf = (key: string, fill: string) => `${key}/fill/${fill}`;

  /** Writes a blob's bytes from `body`, then its record; `whole` resolves true once every byte reached the cache. */
  const storeBlob = async (
    key: string,
    body: ReadableStream,
    blob: ObjectInfo,
    whole: Promise<boolean>,
  ): Promise<void> => {
    const fill = crypto.randomUUID();
    try {
      await cache.put(
        keyOf(fillKeyOf(key, fill)),
        new Response(body, { headers: cacheHeaders(blob.size, blob.contentType) }),
      );
      if (!(await whole)) return;
      const record: BlobRecord = { size: blob.size, contentType: blob.contentType, fill };
      await cache.put(
        keyOf(key),
        new Response(JSON.stringify(record), { headers: cacheHeaders(0, "application/json") }),
      );
    } catch (error) {
      console.warn(JSON.stringify({ event: "edge-cache-incomplete", key, error: String(error) }));
    }
  };

  /** The record of a blob whose bytes are all in the cache, or null. */
  const blobRecord = async (key: string): Promise<BlobRecord | null> => {
    const cached = await match(key);
    if (!cached) return null;
    const value = (await cached.json().catch(() => null)) as Partial<BlobRecord> | null;
    if (!value || typeof value.size !== "number" || typeof value.fill !== "string") return null;
    return {
      size: value.size,
      contentType: typeof value.contentType === "string" ? value.contentType : undefined,
      fill: value.fill,
    };
  };

  /**
   * The client's copy of a blob streaming from R2, written into the cache at the same time. The client sets the
   * pace; the cache's copy follows from a queue of at most CACHE_LAG_BYTES, so a slow cache never slows the client
   * and memory stays bounded. A cache that falls further behind is given up on, and the blob is read again in the
   * background instead. A client that goes away stops both, and the cache's copy is never named by a record.
   */
  const fillWhileStreaming = (hex: string, key: string, blob: StoredBlob): ReadableStream => {
    const toClient = new FixedLengthStream(blob.size);
    const toCache = new FixedLengthStream(blob.size);
    const cacheWriter = toCache.writable.getWriter();
    const queue: Uint8Array[] = [];
    let queued = 0;
    let cacheState: "filling" | "given-up" = "filling";
    let wake: (() => void) | null = null;
    let clientDone: boolean | null = null;
    const giveUp = (reason: unknown) => {
      if (cacheState === "given-up") return;
      cacheState = "given-up";
      queue.length = 0;
      cacheWriter.abort(reason).catch(() => undefined);
      wake?.();
    };
    // Drains the queue into the cache at the cache's pace; true once every byte went in.
    const drain = async (): Promise<boolean> => {
      let written = 0;
      for (;;) {
        if (cacheState === "given-up") return false;
        const chunk = queue.shift();
        if (chunk) {
          queued -= chunk.byteLength;
          try {
            await cacheWriter.write(chunk);
          } catch (error) {
            giveUp(error);
            return false;
          }
          written += chunk.byteLength;
          continue;
        }
        if (clientDone !== null) {
          if (!clientDone || written !== blob.size) return false;
          await cacheWriter.close();
          return true;
        }
        await new Promise<void>((resolve) => (wake = resolve));
        wake = null;
      }
    };
    const pump = async (): Promise<void> => {
      const reader = (blob.body as ReadableStream<Uint8Array>).getReader();
      const client = toClient.writable.getWriter();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (cacheState === "filling") {
            queue.push(value);
            queued += value.byteLength;
            wake?.();
            if (queued > CACHE_LAG_BYTES) {
              giveUp(new Error("the cache fell behind the client"));
              fillInBackground(hex, key);
            }
          }
          await client.write(value);
        }
        await client.close();
        clientDone = true;
      } catch (error) {
        clientDone = false;
        await Promise.allSettled([reader.cancel(error), client.abort(error)]);
        giveUp(error);
      } finally {
        wake?.();
      }
    };
    const whole = drain();
    waitUntil(pump());
    waitUntil(whole);
    waitUntil(storeBlob(key, toCache.readable, blob, whole));
    return toClient.readable;
  };

  /** Reads the whole blob from R2 into the cache, apart from any client (after a ranged miss). */
  const fillInBackground = (hex: string, key: string): void => {
    if (filling.has(key)) return;
    filling.add(key);
    waitUntil(
      (async () => {
        try {
          const blob = await inner.getBlob(hex);
          if (!blob) return;
          // Counted on the way, so a body that ends early is not recorded as whole.
          let written = 0;
          let resolveWhole!: (whole: boolean) => void;
          const whole = new Promise<boolean>((resolve) => (resolveWhole = resolve));
          const counted = blob.body.pipeThrough(
            new TransformStream<Uint8Array, Uint8Array>({
              transform(chunk, controller) {
                written += chunk.byteLength;
                controller.enqueue(chunk);
              },
              flush: () => resolveWhole(written === blob.size),
            }),
          );
          const stored = storeBlob(key, counted.pipeThrough(new FixedLengthStream(blob.size)), blob, whole);
          await stored.finally(() => resolveWhole(false));
        } catch (error) {
          console.warn(JSON.stringify({ event: "edge-cache-error", operation: "fill", key, error: String(error) }));
        } finally {
          filling.delete(key);
        }
      })(),
    );
  };

  return {
    ...inner,

    async headBlob(hex) {
      const record = await blobRecord(blobKey(digestOf(hex)));
      if (record) return { size: record.size, contentType: record.contentType };
      return inner.headBlob(hex);
    },

    async getBlob(hex, range) {
      const key = blobKey(digestOf(hex));
      const record = await blobRecord(key);
      const cached = record ? await match(fillKeyOf(key, record.fill), range) : null;
      if (record && cached?.body) return { size: record.size, contentType: record.contentType, body: cached.body };
      const blob = await inner.getBlob(hex, range);
      if (!blob || blob.size > options.maxBytes) return blob;
      if (range) {
        fillInBackground(hex, key);
        return blob;
      }
      return { ...blob, body: fillWhileStreaming(hex, key, blob) };
    },

    async headManifest(hex) {
      const cached = await match(manifestKey(digestOf(hex)));
      if (cached) {
        await cached.body?.cancel();
        const info = infoOf(cached);
        if (info) return info;
      }
      return inner.headManifest(hex);
    },

    async getManifest(hex): Promise<StoredManifest | null> {
      const key = manifestKey(digestOf(hex));
      const cached = await match(key);
      if (cached) {
        const bytes = new Uint8Array(await cached.arrayBuffer());
        // A few KiB: checked against the digest, so a copy the cache cut short is never served.
        if ((await sha256Hex(bytes)) === hex)
          return { mediaType: cached.headers.get("Content-Type") ?? undefined, bytes };
      }
      const stored = await inner.getManifest(hex);
      if (stored) store(key, stored.bytes, cacheHeaders(stored.bytes.byteLength, stored.mediaType));
      return stored;
    },

    async getImage(imageKey): Promise<ImageRecord | null> {
      const key = imageRecordKey(imageKey);
      return cachedRecord(
        key,
        isImageRecord,
        () => inner.getImage(imageKey),
        (record) => storeJson(key, record, IMAGE_RECORD_LIFETIME),
      );
    },

    async getResolution(tag) {
      const key = resolutionKey(tag);
      return cachedRecord(
        key,
        isStoredResolution,
        () => inner.getResolution(tag),
        (resolution) => storeResolution(key, resolution),
      );
    },

    async putResolution(tag, resolution) {
      await inner.putResolution(tag, resolution);
      // The location's copy follows the bucket's, or it would serve the old revision until it expires.
      storeResolution(resolutionKey(tag), resolution);
    },
  };

  /** A JSON record from the cache if it is there and well formed, else from the bucket (then kept). */
  async function cachedRecord<T>(
    key: string,
    isValid: (value: unknown) => value is T,
    load: () => Promise<T | null>,
    keep: (value: T) => void,
  ): Promise<T | null> {
    const cached = await match(key);
    if (cached) {
      const value: unknown = await cached.json().catch(() => null);
      if (isValid(value)) return value;
    }
    const loaded = await load();
    if (loaded) keep(loaded);
    return loaded;
  }

  function storeJson(key: string, value: unknown, cacheControl: string): void {
    const text = JSON.stringify(value);
    store(key, text, cacheHeaders(new TextEncoder().encode(text).byteLength, "application/json", cacheControl));
  }

  function storeResolution(key: string, resolution: StoredResolution): void {
    const lifetime = options.resolutionLifetime(resolution);
    if (lifetime !== null && lifetime <= 0) return;
    storeJson(key, resolution, lifetime === null ? FOREVER : `public, max-age=${Math.floor(lifetime)}`);
  }
}
