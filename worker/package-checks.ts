// The front page's name checks: what each package of a composed image is in the package set that the tag resolves
// to, from a builder's package index (POST /packages). The answer for a revision never changes, so it is kept in the
// location's cache under the revision and the names.
//   GET /api/packages?packages=curl+jq&system=x86_64-linux&tag=latest
import type { IRequest } from "itty-router";
import type { PackageCheckAnswer } from "../common/builder-api.ts";
import type { NixSystem } from "../common/image-name.ts";
import { checkPackages } from "./builder-client.ts";
import { EDGE_CACHE_NAME } from "./edge-cache.ts";
import type { Env } from "./env.ts";
import { edgeCacheEnabled, registryStorage } from "./registry-storage.ts";
import { resolveTagCached } from "./resolutions.ts";
import type { RegistryStorage } from "./storage.ts";
import { errorResponse, jsonResponse } from "./responses.ts";
import { tagProblem } from "../common/tag.ts";

export type ChecksOutcome = { ok: true; answer: PackageCheckAnswer } | { ok: false; reason: string };

const DAY = 24 * 60 * 60;

export async function checkNames(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  storage: RegistryStorage,
  packages: readonly string[],
  system: NixSystem,
  tag: string,
): Promise<ChecksOutcome> {
  const problem = tagProblem(tag);
  if (problem) return { ok: false, reason: problem };
  const resolved = await resolveTagCached(env, storage, ctx, tag);
  if (!resolved.ok) return { ok: false, reason: `tag ${tag} could not be resolved right now` };
  const revision = resolved.resolution.revision;
  const names = [...packages].sort();
  const key = `${new URL(request.url).origin}/.edge-cache/package-checks/${revision}/${system}/${names.map(encodeURIComponent).join("/")}`;
  const cache = edgeCacheEnabled(env) ? await caches.open(EDGE_CACHE_NAME) : null;
  const cached = await cache?.match(key).catch(() => undefined);
  if (cached) return { ok: true, answer: await cached.json<PackageCheckAnswer>() };
  const outcome = await checkPackages(env, { packages: names, system, revision });
  if (outcome.kind !== "ok") return { ok: false, reason: "no builder answered the check" };
  if (cache) {
    const body = JSON.stringify(outcome.value);
    ctx.waitUntil(
      cache
        .put(
          key,
          new Response(body, {
            headers: { "Content-Type": "application/json", "Cache-Control": `public, max-age=${DAY}` },
          }),
        )
        .catch(() => undefined),
    );
  }
  return { ok: true, answer: outcome.value };
}

export async function handlePackageChecks(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const url = new URL(request.url);
  const packages = (url.searchParams.get("packages") ?? "")
    .split(/[\s,]+/)
    .filter(Boolean)
    .slice(0, 64);
  const system: NixSystem = url.searchParams.get("system") === "aarch64-linux" ? "aarch64-linux" : "x86_64-linux";
  const tag = url.searchParams.get("tag") ?? "latest";
  if (packages.length === 0) {
    return errorResponse(request.method, 400, "NAME_INVALID", "name at least one package: ?packages=curl+jq", {});
  }
  const outcome = await checkNames(request, env, ctx, await registryStorage(request, env, ctx), packages, system, tag);
  if (!outcome.ok) return errorResponse(request.method, 503, "BUILDER_UNAVAILABLE", outcome.reason, { tag });
  return jsonResponse(request.method, 200, outcome.answer, { "Cache-Control": "no-store" });
}
