// Tag -> package-set revision, through the resolutions/ cache in R2 and the builder's /resolve.
import { SingleFlight } from "../common/single-flight.ts";
import { resolveTag } from "./builder-client.ts";
import type { Env } from "./env.ts";
import { LruMap } from "../common/lru-map.ts";
import { describeError, type Failure } from "./responses.ts";
import type { RegistryStorage, StoredResolution } from "./storage.ts";

export type ResolutionOutcome = { ok: true; resolution: StoredResolution } | { ok: false; failure: Failure };

/** The TAG_CACHE_SECONDS override, or undefined when unset or not a non-negative integer. */
function tagCacheOverride(env: Env): number | undefined {
  const raw = env.TAG_CACHE_SECONDS?.trim();
  if (!raw) return undefined;
  if (!/^\d+$/.test(raw)) {
    console.warn(`ignoring TAG_CACHE_SECONDS="${raw}": not a non-negative integer`);
    return undefined;
  }
  return Number(raw);
}

/**
 * How long, in seconds, a resolution may be reused: null for forever (pinned: ttlSeconds 0), 0 for "never".
 * TAG_CACHE_SECONDS replaces the builder's ttl for moving tags only.
 */
export function reuseSeconds(env: Env, resolution: { ttlSeconds: number }): number | null {
  if (resolution.ttlSeconds === 0) return null;
  return tagCacheOverride(env) ?? resolution.ttlSeconds;
}

/** Seconds a resolution may still be reused from `now`: null for forever, 0 or less for not any more. */
export function reuseLeftSeconds(env: Env, resolution: StoredResolution, now: number = Date.now()): number | null {
  const seconds = reuseSeconds(env, resolution);
  if (seconds === null) return null;
  const fetchedAt = Date.parse(resolution.fetchedAt);
  return Number.isNaN(fetchedAt) ? 0 : seconds - (now - fetchedAt) / 1000;
}

function isFresh(env: Env, resolution: StoredResolution): boolean {
  const left = reuseLeftSeconds(env, resolution);
  return left === null || left > 0;
}

/**
 * One /resolve call per tag at a time in this isolate. Not a build: a lookup that is cheap and gives the same answer
 * to whoever asks, so sharing it per isolate is enough; builds are shared across the edge by their coordinators.
 */
const resolving = new SingleFlight<ResolutionOutcome>();

/**
 * The last resolution of each tag this isolate saw: a warm pull needs no R2 read for it while it is fresh. Once
 * stale, R2 is asked again before the builder, since another isolate may have refreshed it meanwhile.
 */
const remembered = new LruMap<string, StoredResolution>(256);

async function fetchResolution(env: Env, storage: RegistryStorage, tag: string): Promise<ResolutionOutcome> {
  try {
    const outcome = await resolveTag(env, tag);
    switch (outcome.kind) {
      case "ok": {
        const { revision, source, ttlSeconds } = outcome.value;
        const resolution: StoredResolution = { revision, source, ttlSeconds, fetchedAt: new Date().toISOString() };
        remembered.set(tag, resolution);
        try {
          await storage.putResolution(tag, resolution);
        } catch (error) {
          // The answer is still good for this request; the next one asks the builder again.
          console.warn(`could not cache the resolution of tag ${tag}: ${describeError(error)}`);
        }
        return { ok: true, resolution };
      }
      case "error": {
        if (outcome.status === 404) {
          // Always MANIFEST_UNKNOWN (a tag the source doesn't serve), with a detail naming the tag when the builder
          // gave none, so the client gets code, message and detail.
          const first = outcome.body.errors[0];
          return {
            ok: false,
            failure: {
              kind: "error",
              status: 404,
              code: "MANIFEST_UNKNOWN",
              message: first.message,
              detail: first.detail ?? { tag },
            },
          };
        }
        return { ok: false, failure: { kind: "relay", status: outcome.status, bodyText: outcome.bodyText } };
      }
      case "unavailable":
        return { ok: false, failure: { kind: "unavailable", reason: outcome.reason } };
      case "broken":
        return {
          ok: false,
          failure: { kind: "internal", message: `resolving tag "${tag}" failed`, reason: outcome.reason },
        };
    }
  } catch (error) {
    return {
      ok: false,
      failure: { kind: "internal", message: `resolving tag "${tag}" failed`, reason: describeError(error) },
    };
  }
}

/** Resolves a tag that classifyTag accepted. A stale cached answer is used when the builder can't be reached. */
export async function resolveTagCached(
  env: Env,
  storage: RegistryStorage,
  ctx: ExecutionContext,
  tag: string,
  options: { refresh?: boolean } = {},
): Promise<ResolutionOutcome> {
  if (!options.refresh) {
    const known = remembered.get(tag);
    if (known && isFresh(env, known)) return { ok: true, resolution: known };
  }
  const cached = await storage.getResolution(tag);
  if (cached && isFresh(env, cached) && !options.refresh) {
    remembered.set(tag, cached);
    return { ok: true, resolution: cached };
  }

  const pending = resolving.run(tag, () => fetchResolution(env, storage, tag));
  ctx.waitUntil(pending); // keep the shared call alive even if the request that started it goes away
  const outcome = await pending;
  if (!outcome.ok && outcome.failure.kind === "unavailable" && cached) {
    console.warn(
      `builder unreachable (${outcome.failure.reason}); using the stale resolution of tag ${tag} from ${cached.fetchedAt}`,
    );
    return { ok: true, resolution: cached };
  }
  return outcome;
}
