// Response helpers: the registry error format, JSON bodies, and the headers every response carries.
import { errorBody, type RegistryErrorCode } from "../common/registry-errors.ts";

const API_VERSION_HEADER = "Docker-Distribution-API-Version";
const API_VERSION = "registry/2.0";

/** Digest-addressed content never changes. */
export const IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable";

const encoder = new TextEncoder();

export type HeaderMap = Record<string, string>;

function baseHeaders(extra: HeaderMap | undefined): Headers {
  const headers = new Headers(extra);
  headers.set(API_VERSION_HEADER, API_VERSION);
  return headers;
}

/** A response whose body is a small in-memory byte string; Content-Length is always set, HEAD gets no body. */
export function bytesResponse(method: string, status: number, body: Uint8Array, headers: HeaderMap): Response {
  const h = baseHeaders(headers);
  h.set("Content-Length", String(body.byteLength));
  return new Response(method === "HEAD" ? null : body, { status, headers: h });
}

export function jsonResponse(method: string, status: number, value: unknown, headers: HeaderMap = {}): Response {
  return bytesResponse(method, status, encoder.encode(JSON.stringify(value)), {
    "Content-Type": "application/json",
    ...headers,
  });
}

export function textResponse(method: string, status: number, text: string, headers: HeaderMap = {}): Response {
  return bytesResponse(method, status, encoder.encode(text), {
    "Content-Type": "text/plain; charset=utf-8",
    ...headers,
  });
}

/** A registry error: `{"errors":[{"code","message","detail"}]}` as application/json. */
export function errorResponse(
  method: string,
  status: number,
  code: RegistryErrorCode,
  message: string,
  detail?: unknown,
  headers: HeaderMap = {},
): Response {
  return jsonResponse(method, status, errorBody(code, message, detail), headers);
}

/** An error body produced by the builder, passed on byte for byte with its status. */
function relayedErrorResponse(method: string, status: number, bodyText: string, headers: HeaderMap = {}): Response {
  return bytesResponse(method, status, encoder.encode(bodyText), { "Content-Type": "application/json", ...headers });
}

/** A streamed body of known length (an R2 object body or a FixedLengthStream's readable side). */
export function streamResponse(
  method: string,
  status: number,
  body: ReadableStream | null,
  length: number,
  headers: HeaderMap,
): Response {
  const h = baseHeaders(headers);
  h.set("Content-Length", String(length));
  if (method === "HEAD" && body) {
    body.cancel().catch(() => undefined);
    body = null;
  }
  return new Response(body, { status, headers: h });
}

/** A bodiless response (304). */
export function emptyResponse(status: number, headers: HeaderMap): Response {
  return new Response(null, { status, headers: baseHeaders(headers) });
}

const BUILDER_RETRY_AFTER_SECONDS = 30;

/**
 * Logs a failure's details under a fresh id and returns the id, which the client gets instead of the details: they
 * may name a builder's address, the bucket or an error from R2, which are the operator's to read, not the public's.
 */
export function logIncident(level: "error" | "warn", summary: string, details: unknown): string {
  const id = crypto.randomUUID();
  // One JSON line, as Workers Logs index them; an Error's own fields don't survive JSON.stringify.
  const detail = details instanceof Error ? (details.stack ?? `${details.name}: ${details.message}`) : details;
  console[level](JSON.stringify({ event: "incident", id, summary, details: detail }));
  return id;
}

/** A 503 for a builder that can't be reached; why (its address, the fetch error) goes to the log only. */
function builderUnavailableResponse(method: string, reason: string): Response {
  const id = logIncident("warn", "the image builder can't be reached", reason);
  return errorResponse(
    method,
    503,
    "BUILDER_UNAVAILABLE",
    `the image builder can't be reached; retry in ${BUILDER_RETRY_AFTER_SECONDS} seconds (the registry's log has the details under id ${id})`,
    { id, retryAfterSeconds: BUILDER_RETRY_AFTER_SECONDS },
    { "Retry-After": String(BUILDER_RETRY_AFTER_SECONDS) },
  );
}

/** A 500 UNKNOWN: `message` is for the client, `details` (an error, a builder's answer) for the log, under an id. */
export function internalErrorResponse(
  method: string,
  message: string,
  details: unknown,
  detail: Record<string, unknown> = {},
): Response {
  const id = logIncident("error", message, details);
  return errorResponse(method, 500, "UNKNOWN", `${message} (the registry's log has the details under id ${id})`, {
    ...detail,
    id,
  });
}

/** Makes sure a finished response carries the API version header and has no body for HEAD. */
export function finishResponse(method: string, response: Response): Response {
  let result = response;
  try {
    result.headers.set(API_VERSION_HEADER, API_VERSION);
  } catch {
    // Immutable headers (a response passed through from fetch): copy into a fresh response.
    result = new Response(response.body, response);
    result.headers.set(API_VERSION_HEADER, API_VERSION);
  }
  if (method === "HEAD" && result.body) {
    result.body.cancel().catch(() => undefined);
    result = new Response(null, { status: result.status, headers: result.headers });
  }
  return result;
}

/** Quoted entity tag for a digest. */
export function etagOf(digest: string): string {
  return `"${digest}"`;
}

/** Whether an If-None-Match header matches the entity tag (weak comparison, as RFC 9110 asks for it). */
export function ifNoneMatchHits(request: Request, etag: string): boolean {
  const header = request.headers.get("If-None-Match");
  if (!header) return false;
  if (header.trim() === "*") return true;
  return header
    .split(",")
    .map((t) => t.trim().replace(/^W\//, ""))
    .includes(etag);
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

/**
 * A failure as plain data, so that one outcome can be shared by concurrent requests (a Response object belongs
 * to the request that made it) and turned into a response by each of them.
 */
export type Failure =
  /** A registry error body from the builder, relayed byte for byte with its status (and its Retry-After, if any). */
  | { kind: "relay"; status: number; bodyText: string; retryAfterSeconds?: number }
  | {
      kind: "error";
      status: number;
      code: RegistryErrorCode;
      message: string;
      detail?: unknown;
      retryAfterSeconds?: number;
    }
  /** The builder could not be reached; `reason` names it, so it is logged, not shown. */
  | { kind: "unavailable"; reason: string }
  /** A 500 on the registry's side: `message` is for the client, `reason` (hosts, buckets, R2's errors) for the log. */
  | { kind: "internal"; message: string; reason: string };

export function failureResponse(method: string, failure: Failure): Response {
  switch (failure.kind) {
    case "relay":
      return relayedErrorResponse(
        method,
        failure.status,
        failure.bodyText,
        failure.retryAfterSeconds === undefined ? {} : { "Retry-After": String(failure.retryAfterSeconds) },
      );
    case "error":
      return errorResponse(
        method,
        failure.status,
        failure.code,
        failure.message,
        failure.detail,
        failure.retryAfterSeconds === undefined ? {} : { "Retry-After": String(failure.retryAfterSeconds) },
      );
    case "unavailable":
      return builderUnavailableResponse(method, failure.reason);
    case "internal":
      return internalErrorResponse(method, failure.message, failure.reason);
  }
}
