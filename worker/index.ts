// The worker: the pull side of the OCI distribution API, for images built from Nix on demand.
//
//   GET|HEAD /v2/                                  API version check
//   GET|HEAD /v2/<name>/manifests/<tag|digest>     manifests.ts (a build job on a miss, HEAD too; the pull waits)
//   GET|HEAD /v2/<name>/blobs/<digest>             blobs.ts (from R2, with Range)
//   GET|HEAD /v2/<name>/tags/list?n=&last=         tags.ts
//   GET|HEAD /v2/<name>/referrers/<digest>         referrers.ts (always an empty index)
//   other methods on /v2/...                       405 UNSUPPORTED (no push, no delete)
//   GET|HEAD /api/builds[/<image key>]            builds-api.ts (build progress as JSON)
//   GET|HEAD /api/packages?packages=&system=&tag=  package-checks.ts (names checked against the package set)
//   GET|HEAD /                                     pages/home.ts: the front page (plain text for curl)
//   GET|HEAD /builds/<image key>, /images/<key>   pages/: a build's progress, a built image's layers
//   /static/...                                    worker/public/static: the pages' CSS and script (static assets)
//   GET|HEAD|POST /token                           pull-auth.ts: pull tokens, with PULL_AUTH/PULL_CREDENTIALS set
//
// With pull authentication on (pull-auth.ts), every route but /token needs credentials, checked before routing.
//
// The build coordinator (a Durable Object per image key) is exported from here, as Workers require.
//
// Routing looks at the path only (itty-router matches url.pathname), so containerd's `?ns=...` changes nothing.
import { Router, type IRequest } from "itty-router";
import { handleBlob } from "./blobs.ts";
import { handleBuild, handleBuildList } from "./builds-api.ts";
import type { Env } from "./env.ts";
import { handleManifest } from "./manifests.ts";
import { handlePackageChecks } from "./package-checks.ts";
import { handleBuildPage } from "./pages/build-page.ts";
import { handleCompose, handleHome } from "./pages/home.ts";
import { handleImagePage } from "./pages/image-page.ts";
import { authorizeRequest, handleTokenRequest, TOKEN_PATH } from "./pull-auth.ts";
import { handleReferrers } from "./referrers.ts";
import { errorResponse, finishResponse, internalErrorResponse, jsonResponse } from "./responses.ts";
import { handleTagsList } from "./tags.ts";

const PUSH_NOT_SUPPORTED = "this registry builds images itself from Nix; pushing and deleting are not supported";
const ENDPOINTS =
  "/v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest>, /v2/<name>/tags/list and /v2/<name>/referrers/<digest>";

type Handler = (request: IRequest, env: Env, ctx: ExecutionContext) => Response | Promise<Response>;

function apiBase(request: IRequest): Response {
  return jsonResponse(request.method, 200, {});
}

function v2Fallback(request: IRequest): Response {
  const method = request.method;
  if (method !== "GET" && method !== "HEAD") {
    return errorResponse(method, 405, "UNSUPPORTED", PUSH_NOT_SUPPORTED, { method }, { Allow: "GET, HEAD" });
  }
  const path = new URL(request.url).pathname;
  return errorResponse(
    method,
    404,
    "UNSUPPORTED",
    `${path} is not an endpoint of this registry; it serves ${ENDPOINTS}`,
    {
      path,
    },
  );
}

function notFound(request: IRequest): Response {
  const path = new URL(request.url).pathname;
  return errorResponse(
    request.method,
    404,
    "UNSUPPORTED",
    `nothing at ${path}; the registry API is under /v2/ (${ENDPOINTS})`,
    {
      path,
    },
  );
}

const router = Router<IRequest, [Env, ExecutionContext]>();

function getAndHead(path: string, handler: Handler): void {
  router.get(path, handler);
  router.head(path, handler);
}

getAndHead("/v2/", apiBase);
getAndHead("/v2/:name+/manifests/:reference", handleManifest);
getAndHead("/v2/:name+/blobs/:digest", handleBlob);
getAndHead("/v2/:name+/tags/list", handleTagsList);
getAndHead("/v2/:name+/referrers/:digest", handleReferrers);
router.all("/v2/*", v2Fallback);
getAndHead("/api/builds", handleBuildList);
getAndHead("/api/packages", handlePackageChecks);
getAndHead("/api/builds/:key", handleBuild);
getAndHead("/", handleHome);
getAndHead("/compose", handleCompose);
getAndHead("/builds/:key", handleBuildPage);
getAndHead("/images/:key", handleImagePage);
router.all(TOKEN_PATH, handleTokenRequest);
router.all("*", notFound);

export { BuildCoordinator } from "./build-coordinator.ts";

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const method = request.method;
    let response: Response;
    try {
      const auth = await authorizeRequest(request, env);
      if (!auth.allowed) {
        response = auth.response;
      } else {
        const routed: unknown = await router.fetch(request, env, ctx);
        response = auth.finish(routed instanceof Response ? routed : notFound(request as IRequest));
      }
    } catch (error) {
      // The error may be R2's or the runtime's, naming internals: the log gets it, the client an id to quote.
      const path = new URL(request.url).pathname;
      response = internalErrorResponse(method, `${method} ${path} failed`, error);
    }
    return finishResponse(method, response);
  },
} satisfies ExportedHandler<Env>;
