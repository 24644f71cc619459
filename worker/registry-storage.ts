// The storage a pull reads through: this isolate's memory (isolate-cache.ts), then the location's cache
// (edge-cache.ts), then the bucket (storage.ts). EDGE_CACHE=off leaves the location's cache out.
import type { Env } from "./env.ts";
import { DEFAULT_EDGE_CACHE_MAX_BYTES, EDGE_CACHE_NAME, edgeCached } from "./edge-cache.ts";
import { isolateCached } from "./isolate-cache.ts";
import { reuseLeftSeconds } from "./resolutions.ts";
import { r2Storage, type RegistryStorage } from "./storage.ts";

/** EDGE_CACHE_MAX_BYTES, or the default when unset or not a positive integer (said once per isolate). */
let warnedMaxBytes = false;
function maxBytes(env: Env): number {
  const raw = env.EDGE_CACHE_MAX_BYTES?.trim();
  if (!raw) return DEFAULT_EDGE_CACHE_MAX_BYTES;
  if (/^\d+$/.test(raw)) return Number(raw);
  if (!warnedMaxBytes) {
    warnedMaxBytes = true;
    console.warn(
      `ignoring EDGE_CACHE_MAX_BYTES="${raw}": not a number of bytes; using ${DEFAULT_EDGE_CACHE_MAX_BYTES}`,
    );
  }
  return DEFAULT_EDGE_CACHE_MAX_BYTES;
}

export function edgeCacheEnabled(env: Env): boolean {
  return env.EDGE_CACHE?.trim().toLowerCase() !== "off";
}

export async function registryStorage(request: Request, env: Env, ctx: ExecutionContext): Promise<RegistryStorage> {
  const r2 = r2Storage(env.REGISTRY_BUCKET);
  if (!edgeCacheEnabled(env)) return isolateCached(r2);
  const edge = edgeCached(r2, {
    cache: await caches.open(EDGE_CACHE_NAME),
    origin: new URL(request.url).origin,
    waitUntil: (promise) => ctx.waitUntil(promise),
    maxBytes: maxBytes(env),
    resolutionLifetime: (resolution) => reuseLeftSeconds(env, resolution),
  });
  return isolateCached(edge);
}
