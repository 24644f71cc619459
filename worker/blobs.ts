// GET|HEAD /v2/<name>/blobs/<digest>: streamed from R2 with Range support. The builder writes every blob into the
// bucket before the manifest that names it, so a blob not in R2 is not part of any image served here.
import type { IRequest } from "itty-router";
import type { Digest } from "../common/digest.ts";
import { parseRange, satisfyRange, type RangeSpec } from "../common/http-range.ts";
import { blobRedirect } from "./blob-redirect.ts";
import type { Env } from "./env.ts";
import { checkDigest, checkName, decodeParam } from "./params.ts";
import {
  emptyResponse,
  errorResponse,
  etagOf,
  ifNoneMatchHits,
  IMMUTABLE_CACHE_CONTROL,
  streamResponse,
  type HeaderMap,
} from "./responses.ts";
import { registryStorage } from "./registry-storage.ts";
import type { RegistryStorage } from "./storage.ts";

const DEFAULT_BLOB_TYPE = "application/octet-stream";

function blobHeaders(digest: Digest, contentType: string | null | undefined): HeaderMap {
  return {
    "Content-Type": contentType || DEFAULT_BLOB_TYPE,
    "Docker-Content-Digest": digest,
    ETag: etagOf(digest),
    "Cache-Control": IMMUTABLE_CACHE_CONTROL,
    "Accept-Ranges": "bytes",
  };
}

function rangeNotSatisfiable(method: string, digest: Digest, range: string | null, size: number | null): Response {
  const headers: HeaderMap = size === null ? {} : { "Content-Range": `bytes */${size}` };
  const detail = { digest, range, ...(size === null ? {} : { size }) };
  const message =
    size === null
      ? `range "${range}" cannot be satisfied for blob ${digest}`
      : `range "${range}" cannot be satisfied for blob ${digest} of ${size} bytes`;
  return errorResponse(method, 416, "RANGE_INVALID", message, detail, headers);
}

function blobUnknown(method: string, digest: Digest): Response {
  return errorResponse(method, 404, "BLOB_UNKNOWN", `blob ${digest} is not known to this registry`, { digest });
}

/** The Range to honour: none for HEAD, and none when If-Range names another entity. */
function effectiveRange(request: Request, digest: Digest): RangeSpec {
  if (request.method !== "GET") return { kind: "none" };
  const ifRange = request.headers.get("If-Range");
  if (ifRange !== null && ifRange.trim() !== etagOf(digest)) return { kind: "none" };
  return parseRange(request.headers.get("Range"));
}

async function serveFromR2(
  request: Request,
  storage: RegistryStorage,
  digest: Digest,
  hex: string,
  range: RangeSpec,
): Promise<Response | null> {
  const method = request.method;
  if (method === "HEAD") {
    const info = await storage.headBlob(hex);
    if (!info) return null;
    return streamResponse(method, 200, null, info.size, blobHeaders(digest, info.contentType));
  }
  if (range.kind === "none" || range.kind === "multiple") {
    const blob = await storage.getBlob(hex);
    if (!blob) return null;
    return streamResponse(method, 200, blob.body, blob.size, blobHeaders(digest, blob.contentType));
  }
  const info = await storage.headBlob(hex);
  if (!info) return null;
  if (range.kind === "invalid") return rangeNotSatisfiable(method, digest, request.headers.get("Range"), info.size);
  const satisfied = satisfyRange(range, info.size);
  if (!satisfied) return rangeNotSatisfiable(method, digest, request.headers.get("Range"), info.size);
  const length = satisfied.end - satisfied.start + 1;
  const blob = await storage.getBlob(hex, { offset: satisfied.start, length });
  if (!blob) return null;
  return streamResponse(method, 206, blob.body, length, {
    ...blobHeaders(digest, blob.contentType),
    "Content-Range": `bytes ${satisfied.start}-${satisfied.end}/${info.size}`,
  });
}

export async function handleBlob(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const method = request.method;
  const name = checkName(method, request.params.name);
  if (!name.ok) return name.response;
  const reference = decodeParam(request.params.digest);
  if (reference === "uploads") {
    return errorResponse(
      method,
      404,
      "UNSUPPORTED",
      "blob uploads are not supported: this registry builds images itself from Nix",
      {
        name: name.name,
      },
    );
  }
  const checked = checkDigest(method, reference);
  if (!checked.ok) return checked.response;
  const { digest, hex } = checked;
  const storage = await registryStorage(request, env, ctx);
  if (method === "GET" && ifNoneMatchHits(request, etagOf(digest)) && (await storage.headBlob(hex))) {
    return emptyResponse(304, {
      "Docker-Content-Digest": digest,
      ETag: etagOf(digest),
      "Cache-Control": IMMUTABLE_CACHE_CONTROL,
    });
  }
  // Large blobs may be fetched from the bucket directly (off unless BLOB_REDIRECT_MIN_BYTES is set).
  const redirect = await blobRedirect(request, env, digest, async () => (await storage.headBlob(hex))?.size ?? null);
  if (redirect) return redirect;
  const range = effectiveRange(request, digest);
  return (await serveFromR2(request, storage, digest, hex, range)) ?? blobUnknown(method, digest);
}
