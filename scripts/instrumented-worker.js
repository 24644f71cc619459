// Instrumentation for the tests and the benchmark only, never deployed: the registry worker as bundled for
// deployment (./index.js beside this file in the bundle folder), with
//
// - its R2 binding wrapped to count reads (get, head, list) by key, and to wait R2_DELAY_MS before each, a model
//   of a location far from the bucket's region;
// - its caches named per location (LOCATION), since the local runtime keeps one cache for all worker instances
//   where Cloudflare keeps one per location.
//
// GET /.instrument/r2-reads answers the counts since the last POST /.instrument/r2-reads/reset.
import registry from "./index.js";
export * from "./index.js";

/** @type {{ operation: string; key: string }[]} */
let reads = [];

/** @param {string} location */
function renameCaches(location) {
  const open = caches.open.bind(caches);
  caches.open = (name) => open(`${location}:${name}`);
}
let renamed = false;

/**
 * @param {R2Bucket} bucket
 * @param {number} delayMs
 * @returns {R2Bucket}
 */
function instrumented(bucket, delayMs) {
  return new Proxy(bucket, {
    get(target, property) {
      const value = Reflect.get(target, property);
      if (typeof value !== "function") return value;
      if (property !== "get" && property !== "head" && property !== "list") return value.bind(target);
      return async (/** @type {unknown[]} */ ...args) => {
        const first = args[0];
        const key =
          typeof first === "string" ? first : `${/** @type {{ prefix?: string }} */ (first ?? {}).prefix ?? ""}*`;
        reads.push({ operation: String(property), key });
        if (delayMs > 0) await new Promise((resolve) => setTimeout(resolve, delayMs));
        return value.apply(target, args);
      };
    },
  });
}

export default {
  /**
   * @param {Request} request
   * @param {Record<string, unknown> & { REGISTRY_BUCKET: R2Bucket; R2_DELAY_MS?: string; LOCATION?: string }} env
   * @param {ExecutionContext} ctx
   */
  async fetch(request, env, ctx) {
    if (!renamed) {
      renamed = true;
      renameCaches(env.LOCATION ?? "main");
    }
    const { pathname } = new URL(request.url);
    if (pathname === "/.instrument/r2-reads") return Response.json({ location: env.LOCATION ?? "main", reads });
    if (pathname === "/.instrument/r2-reads/reset" && request.method === "POST") {
      reads = [];
      return new Response(null, { status: 204 });
    }
    const delayMs = Number(env.R2_DELAY_MS ?? 0);
    return registry.fetch(request, { ...env, REGISTRY_BUCKET: instrumented(env.REGISTRY_BUCKET, delayMs) }, ctx);
  },
};
