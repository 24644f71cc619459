// GET|HEAD /v2/<name>/blobs/<digest>: streamed from R2 with Range support; on a miss, streamed from the builder
// and copied into R2 at the same time, at the slower side's pace (FixedLengthStream + R2's sha256 check: a short or
// wrong copy never lands).
import type { IRequest } from "itty-router";
import type { Digest } from "../common/digest.ts";
import { isRegistryErrorBody } from "../common/registry-errors.ts";
import { fetchBlob } from "./builder-client.ts";
import type { Env } from "./env.ts";
import { lockstepTee } from "./lockstep-tee.ts";
import { checkDigest, checkName, decodeParam } from "./params.ts";
import { formatRange, parseRange, satisfyRange, type RangeSpec } from "../common/http-range.ts";
import {
  builderUnavailableResponse,
  describeError,
  emptyResponse,
  errorResponse,
  etagOf,
  ifNoneMatchHits,
  IMMUTABLE_CACHE_CONTROL,
  streamResponse,
  type HeaderMap,
} from "./responses.ts";
import { r2Storage, type RegistryStorage } from "./storage.ts";

const DEFAULT_BLOB_TYPE = "application/octet-stream";

type SingleRange = Extract<RangeSpec, { kind: "from" | "suffix" }>;

/** Copies from the builder into R2 running in this isolate, by hex digest. */
const copies = new Map<string, Promise<void>>();

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

function contentLengthOf(response: Response): number | null {
  const raw = response.headers.get("Content-Length");
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  const n = Number(raw);
  return Number.isSafeInteger(n) ? n : null;
}

/** A stream of exactly `length` bytes fed from `source`: gives the response a Content-Length, errors if short. */
function fixedLength(source: ReadableStream, length: number, what: string): ReadableStream {
  const fixed = new FixedLengthStream(length);
  source.pipeTo(fixed.writable).catch((error: unknown) => console.warn(`${what}: ${describeError(error)}`));
  return fixed.readable;
}

async function drain(response: Response): Promise<string> {
  try {
    return await response.text();
  } catch {
    return "";
  }
}

/** What an unexpected builder answer for a blob becomes: a 500 that says what the builder said. */
async function unexpectedBuilderAnswer(method: string, digest: Digest, response: Response): Promise<Response> {
  const text = await drain(response);
  let said = text.slice(0, 300);
  try {
    const parsed: unknown = JSON.parse(text);
    if (isRegistryErrorBody(parsed)) said = `${parsed.errors[0].code}: ${parsed.errors[0].message}`;
  } catch {
    // not JSON
  }
  return errorResponse(method, 500, "UNKNOWN", `fetching blob ${digest} from the builder failed: it answered ${response.status} ${said}`.trim(), {
    digest,
  });
}

function registerCopy(ctx: ExecutionContext, hex: string, copy: Promise<void>): void {
  const tracked = copy
    .catch((error: unknown) => console.warn(`copying blob sha256:${hex} into R2 failed: ${describeError(error)}`))
    .finally(() => copies.delete(hex));
  copies.set(hex, tracked);
  ctx.waitUntil(tracked);
}

/** A full copy of the blob from the builder into R2 in the background, unless one is already running here. */
function startBackgroundCopy(env: Env, storage: RegistryStorage, ctx: ExecutionContext, digest: Digest, hex: string): void {
  const running = copies.get(hex);
  if (running) {
    ctx.waitUntil(running);
    return;
  }
  registerCopy(
    ctx,
    hex,
    (async () => {
      if (await storage.headBlob(hex)) return; // another isolate, or the builder itself, got there first
      const response = await fetchBlob(env, "GET", digest);
      if ("unavailable" in response) throw new Error(response.unavailable);
      if (response.status !== 200 || !response.body) {
        await drain(response);
        throw new Error(`the builder answered ${response.status}`);
      }
      const length = contentLengthOf(response);
      if (length === null) {
        await response.body.cancel();
        throw new Error("the builder sent no Content-Length, and R2 needs a known length");
      }
      const fixed = new FixedLengthStream(length);
      const piping = response.body.pipeTo(fixed.writable);
      await Promise.all([storage.putBlob(hex, fixed.readable, response.headers.get("Content-Type") || DEFAULT_BLOB_TYPE), piping]);
    })(),
  );
}

async function serveFromR2(request: Request, storage: RegistryStorage, digest: Digest, hex: string, range: RangeSpec): Promise<Response | null> {
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

/** The blob's size from a HEAD to the builder, for a 416 whose Content-Range the builder left out. */
async function builderBlobSize(env: Env, digest: Digest): Promise<number | null> {
  const response = await fetchBlob(env, "HEAD", digest);
  if ("unavailable" in response || response.status !== 200) return null;
  return contentLengthOf(response);
}

async function serveFromBuilder(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  storage: RegistryStorage,
  digest: Digest,
  hex: string,
  range: RangeSpec,
): Promise<Response> {
  const method = request.method;
  const rangeHeader = request.headers.get("Range");

  if (method === "HEAD" || range.kind === "invalid") {
    const response = await fetchBlob(env, "HEAD", digest);
    if ("unavailable" in response) return builderUnavailableResponse(method, response.unavailable);
    if (response.status === 404) return blobUnknown(method, digest);
    const size = contentLengthOf(response);
    if (response.status !== 200 || size === null) return unexpectedBuilderAnswer(method, digest, response);
    if (range.kind === "invalid") return rangeNotSatisfiable(method, digest, rangeHeader, size);
    return streamResponse(method, 200, null, size, blobHeaders(digest, response.headers.get("Content-Type")));
  }

  const single: SingleRange | null = range.kind === "from" || range.kind === "suffix" ? range : null;
  const response = await fetchBlob(env, "GET", digest, single ? formatRange(single) : undefined);
  if ("unavailable" in response) return builderUnavailableResponse(method, response.unavailable);
  if (response.status === 404) {
    await drain(response);
    return blobUnknown(method, digest);
  }
  const contentType = response.headers.get("Content-Type");
  const length = contentLengthOf(response);

  if (response.status === 416) {
    await drain(response);
    const stated = /^bytes \*\/(\d+)$/.exec(response.headers.get("Content-Range") ?? "");
    return rangeNotSatisfiable(method, digest, rangeHeader, stated ? Number(stated[1]) : await builderBlobSize(env, digest));
  }

  if (response.status === 206 && response.body && length !== null) {
    const contentRange = response.headers.get("Content-Range");
    startBackgroundCopy(env, storage, ctx, digest, hex);
    return streamResponse(method, 206, fixedLength(response.body, length, `streaming a range of ${digest} to the client stopped`), length, {
      ...blobHeaders(digest, contentType),
      ...(contentRange ? { "Content-Range": contentRange } : {}),
    });
  }

  if (response.status !== 200 || !response.body) return unexpectedBuilderAnswer(method, digest, response);

  const headers = blobHeaders(digest, contentType);
  if (length === null) {
    // Can't be copied into R2 without a length; still serve it (chunked) rather than fail the pull.
    console.warn(`the builder sent blob ${digest} without Content-Length; not copying it into R2`);
    const h = new Headers(headers);
    return new Response(response.body, { status: 200, headers: h });
  }
  if (copies.has(hex)) {
    // A copy into R2 is already running here: just pass the bytes on.
    ctx.waitUntil(copies.get(hex) ?? Promise.resolve());
    return streamResponse(method, 200, fixedLength(response.body, length, `streaming ${digest} to the client stopped`), length, headers);
  }
  // Stream to the client and into R2 at once, at the pace of the slower of the two (lockstep-tee.ts), so a slow
  // client doesn't make the isolate hold the blob. The R2 branch is length-checked (FixedLengthStream) and
  // sha256-checked by R2 itself, so a broken or wrong transfer leaves nothing behind.
  const [toClient, toR2] = lockstepTee(response.body);
  const fixedForR2 = new FixedLengthStream(length);
  registerCopy(
    ctx,
    hex,
    Promise.all([storage.putBlob(hex, fixedForR2.readable, contentType || DEFAULT_BLOB_TYPE), toR2.pipeTo(fixedForR2.writable)]).then(
      () => undefined,
    ),
  );
  return streamResponse(method, 200, fixedLength(toClient, length, `streaming ${digest} to the client stopped`), length, headers);
}

export async function handleBlob(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const method = request.method;
  const name = checkName(method, request.params.name);
  if (!name.ok) return name.response;
  const reference = decodeParam(request.params.digest);
  if (reference === "uploads") {
    return errorResponse(method, 404, "UNSUPPORTED", "blob uploads are not supported: this registry builds images itself from Nix", {
      name: name.name,
    });
  }
  const checked = checkDigest(method, reference);
  if (!checked.ok) return checked.response;
  const { digest, hex } = checked;
  const storage = r2Storage(env.REGISTRY_BUCKET);
  if (method === "GET" && ifNoneMatchHits(request, etagOf(digest)) && (await storage.headBlob(hex))) {
    return emptyResponse(304, { "Docker-Content-Digest": digest, ETag: etagOf(digest), "Cache-Control": IMMUTABLE_CACHE_CONTROL });
  }
  const range = effectiveRange(request, digest);
  const fromR2 = await serveFromR2(request, storage, digest, hex, range);
  if (fromR2) return fromR2;
  return serveFromBuilder(request, env, ctx, storage, digest, hex, range);
}
