// The builder's HTTP API (see common/builder-api.ts): /health and /ready for operators, and the signed
// endpoints the worker calls: /resolve, /build, /blobs/<digest>.
import { IttyRouter, type IRequest } from "itty-router";
import {
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  verifyRequest,
  type BuildRequest,
  type ResolveRequest,
} from "../common/builder-api.ts";
import { parseDigest } from "../common/digest.ts";
import { contentRange, parseRange, satisfyRange } from "../common/http-range.ts";
import { errorBody, type RegistryErrorCode } from "../common/registry-errors.ts";
import { classifyTag } from "../common/tag.ts";
import type { BlobStore } from "./blob-store.ts";
import { validateBuildRequest } from "./build-request.ts";
import type { ImageBuilder } from "./image-builder.ts";
import type { Logger } from "./log.ts";
import { NixBuildError, NixTooOldError, UnknownPackagesError } from "./nix-runner.ts";
import { RevisionUnavailableError, type PackageSource } from "./sources/package-source.ts";
import { Readable } from "node:stream";

export interface BuilderServerDeps {
  secret: string;
  store: BlobStore;
  source: PackageSource;
  builder: ImageBuilder;
  log: Logger;
  /** Checks that Nix and the store work, for /ready. */
  readiness: () => Promise<string | null>;
}

/** Build requests are a few package names; anything bigger is not from the worker. */
const MAX_REQUEST_BYTES = 64 * 1024;

function json(status: number, value: unknown, headers: Record<string, string> = {}): Response {
  const body = JSON.stringify(value);
  return new Response(body, {
    status,
    headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), ...headers },
  });
}

function fail(status: number, code: RegistryErrorCode, message: string, detail?: unknown): Response {
  return json(status, errorBody(code, message, detail));
}

type SignedRequest = IRequest & { rawBody: string };

export function createBuilderHandler(deps: BuilderServerDeps): (request: Request) => Promise<Response> {
  const { log } = deps;
  const router = IttyRouter();

  const authenticate = async (request: IRequest): Promise<Response | undefined> => {
    const body = request.method === "POST" ? await readBounded(request, MAX_REQUEST_BYTES) : "";
    if (body === null) {
      // Connection: close, so that the rest of an oversized body is not read at all.
      const response = fail(413, "UNSUPPORTED", `request body too large: the builder takes at most ${MAX_REQUEST_BYTES} bytes`);
      response.headers.set("connection", "close");
      return response;
    }
    (request as SignedRequest).rawBody = body;
    const url = new URL(request.url);
    const check = await verifyRequest(deps.secret, request.method, url.pathname + url.search, body, {
      signature: request.headers.get(SIGNATURE_HEADER) ?? undefined,
      timestamp: request.headers.get(TIMESTAMP_HEADER) ?? undefined,
    });
    if (!check.ok) {
      log.warn("unauthorized", { method: request.method, path: url.pathname, reason: check.reason });
      return fail(401, "UNAUTHORIZED", `this builder only serves its registry's worker: ${check.reason}`);
    }
    return undefined;
  };

  router
    .get("/health", () => json(200, { ok: true, store: deps.store.description, source: deps.source.description, ...deps.builder.counters }))
    .get("/ready", async () => {
      const problem = await deps.readiness();
      return problem ? json(503, { ready: false, problem }) : json(200, { ready: true });
    })
    .post("/resolve", authenticate, async (request) => {
      const body = parseJson<ResolveRequest>((request as SignedRequest).rawBody);
      if (!body || typeof body.tag !== "string" || !classifyTag(body.tag)) {
        return fail(400, "MANIFEST_UNKNOWN", "the resolve request names no valid tag");
      }
      const resolved = await deps.source.resolve(body.tag);
      if (!resolved) {
        return fail(404, "MANIFEST_UNKNOWN", `tag "${body.tag}" is not served by this registry's package source (${deps.source.description})`, {
          tag: body.tag,
        });
      }
      return json(200, resolved);
    })
    .post("/build", authenticate, async (request) => {
      const checked = validateBuildRequest(parseJson<unknown>((request as SignedRequest).rawBody));
      if (!checked.ok) return fail(400, "NAME_INVALID", checked.reason);
      return buildResponse(deps, checked.request);
    })
    .all("/blobs/:digest", authenticate, async (request) => {
      if (request.method !== "GET" && request.method !== "HEAD") return fail(405, "UNSUPPORTED", "blobs are read-only");
      const digest = parseDigest(decodeURIComponent(request.params.digest));
      if (!digest.ok) return fail(400, "DIGEST_INVALID", digest.reason);
      const info = await deps.store.stat(digest.digest);
      if (!info) return fail(404, "BLOB_UNKNOWN", `blob ${digest.digest} is not in the builder's store`);
      const spec = parseRange(request.headers.get("range"));
      const single = spec.kind === "from" || spec.kind === "suffix" ? spec : null;
      const range = single ? satisfyRange(single, info.size) : null;
      if (spec.kind === "invalid" || (single && !range)) {
        const response = fail(416, "RANGE_INVALID", `range ${request.headers.get("range")} cannot be served from a blob of ${info.size} bytes`);
        response.headers.set("content-range", contentRange(null, info.size));
        return response;
      }
      const headers: Record<string, string> = {
        "content-type": "application/octet-stream",
        "docker-content-digest": digest.digest,
        "accept-ranges": "bytes",
        "content-length": String(range ? range.end - range.start + 1 : info.size),
      };
      if (range) headers["content-range"] = contentRange(range, info.size);
      const status = range ? 206 : 200;
      if (request.method === "HEAD") return new Response(null, { status, headers });
      const stream = await deps.store.read(digest.digest, range ?? undefined);
      if (!stream) return fail(404, "BLOB_UNKNOWN", `blob ${digest.digest} is not in the builder's store`);
      return new Response(Readable.toWeb(stream) as ReadableStream<Uint8Array>, { status, headers });
    })
    .all("*", () => fail(404, "UNSUPPORTED", "no such builder endpoint; see common/builder-api.ts"));

  return async (request) => {
    const started = performance.now();
    let response: Response;
    try {
      response = await router.fetch(request);
    } catch (error) {
      log.error("request-failed", { method: request.method, url: request.url, error: String((error as Error).stack ?? error) });
      response = fail(500, "UNKNOWN", `the builder failed unexpectedly: ${(error as Error).message}`);
    }
    const url = new URL(request.url);
    if (url.pathname !== "/health") {
      log.info("request", { method: request.method, path: url.pathname, status: response.status, ms: Math.round(performance.now() - started) });
    }
    return response;
  };
}

async function buildResponse(deps: BuilderServerDeps, request: BuildRequest): Promise<Response> {
  try {
    return json(200, await deps.builder.build(request));
  } catch (error) {
    if (error instanceof UnknownPackagesError) {
      const detail = { unknown: error.unknown, removed: error.removed, refused: error.refused };
      // Packages that exist but that the package set refuses (broken, unfree, insecure) are denied, not unknown.
      if (error.onlyRefused) return fail(403, "DENIED", error.message, detail);
      return fail(404, "MANIFEST_UNKNOWN", `${error.message} (package set ${deps.source.description})`, detail);
    }
    if (error instanceof NixTooOldError) {
      deps.log.error("nix-too-old", { packages: request.packages, revision: request.revision, message: error.message });
      return fail(500, "NIX_TOO_OLD", error.message, { needed: error.needed, have: error.have });
    }
    if (error instanceof NixBuildError) {
      deps.log.warn("build-failed", { packages: request.packages, message: error.message, log: error.logTail });
      return fail(500, "BUILD_FAILED", `image build failed: ${error.message}`, { failed: error.failed, log: error.logTail });
    }
    if (error instanceof RevisionUnavailableError) {
      return fail(409, "MANIFEST_UNKNOWN", error.message);
    }
    throw error;
  }
}

/**
 * The body as text, or null as soon as it is longer than `limit` bytes: read before the signature is checked, so
 * an unsigned request must not be able to make the builder hold more than that.
 */
async function readBounded(request: Request, limit: number): Promise<string | null> {
  const declared = Number(request.headers.get("content-length"));
  if (declared > limit) {
    await request.body?.cancel();
    return null;
  }
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function parseJson<T>(text: string): T | null {
  try {
    return JSON.parse(text) as T;
  } catch {
    return null;
  }
}
