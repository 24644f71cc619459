// The worker's bindings, as wrangler.toml declares them.
import type { BlobRedirectEnv } from "./blob-redirect.ts";
import type { BuildCoordinator } from "./build-coordinator.ts";
import type { PullAuthEnv } from "./pull-credentials.ts";

/**
 * The blob redirect's settings (BLOB_REDIRECT_*, R2_S3_*) and pull authentication's (PULL_AUTH, PULL_CREDENTIALS)
 * are described where they are read, in blob-redirect.ts and pull-credentials.ts.
 */
export interface Env extends BlobRedirectEnv, PullAuthEnv {
  /** One content-addressed store for manifests, blobs and the worker's small records (see storage.ts). */
  REGISTRY_BUCKET: R2Bucket;
  /**
   * Origin of the builder service, e.g. http://127.0.0.1:8788 (no path: it serves at its root), or several
   * separated by commas or spaces: jobs are spread over them by image key, and go to the next when one is down.
   */
  BUILDER_URL: string;
  /** One build coordinator per image key (build-coordinator.ts). */
  BUILD_COORDINATOR: DurableObjectNamespace<BuildCoordinator>;
  /**
   * Cold builds a client (CF-Connecting-IP) may start per minute: Workers' rate-limiting binding (wrangler.toml
   * [[ratelimits]]). Pulls of built images and pulls that join a running build don't count.
   */
  COLD_BUILDS?: RateLimit;
  /** Seconds a builder may leave a job's status unanswered before the job goes to the next builder (default 30). */
  BUILDER_STALE_SECONDS?: string;
  /**
   * Shared HMAC secret for signing builder requests. Production: `wrangler secret put BUILDER_SECRET`;
   * local dev: `.dev.vars`, `--var BUILDER_SECRET:...`, or a plain_text binding given to unstable_startWorker.
   */
  BUILDER_SECRET?: string;
  /**
   * Optional override, in seconds, of how long a moving tag's resolution is reused (the builder's ttlSeconds
   * otherwise). "0" re-resolves moving tags on every request. Pinned resolutions (ttlSeconds 0) are kept forever either way.
   */
  TAG_CACHE_SECONDS?: string;
  /**
   * "off" keeps blobs, manifests, image records and resolutions out of the location's cache (edge-cache.ts); on by
   * default. The Cache API only works on a custom domain: on workers.dev every read goes to R2 either way.
   */
  EDGE_CACHE?: string;
  /** Largest blob kept in the location's cache, in bytes (default 500 MB; Cloudflare's cache keeps up to 512 MB). */
  EDGE_CACHE_MAX_BYTES?: string;
}
