// The worker's bindings, as wrangler.toml declares them.
import type { BuildCoordinator } from "./build-coordinator.ts";

export interface Env {
  /** One content-addressed store for manifests, blobs and the worker's small records (see storage.ts). */
  REGISTRY_BUCKET: R2Bucket;
  /**
   * Base URL of the builder service, e.g. http://127.0.0.1:8788 (a path prefix is kept), or several separated by
   * commas or spaces: jobs are spread over them by image key, and go to the next when one is down.
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
}
