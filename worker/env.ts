// The worker's bindings, as wrangler.toml declares them.

export interface Env {
  /** One content-addressed store for manifests, blobs and the worker's small records (see storage.ts). */
  REGISTRY_BUCKET: R2Bucket;
  /** Base URL of the builder service, e.g. http://127.0.0.1:8788 (a path prefix is kept). */
  BUILDER_URL: string;
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
