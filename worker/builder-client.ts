// Calls to the builder service, each signed with the shared secret (common/builder-api.ts).
import {
  signRequest,
  type BuildRequest,
  type BuildResult,
  type BuiltManifest,
  type ResolveRequest,
  type ResolveResult,
} from "../common/builder-api.ts";
import { isDigest, type Digest } from "../common/digest.ts";
import { isRegistryErrorBody, type RegistryErrorBody } from "../common/registry-errors.ts";
import type { Env } from "./env.ts";

/** The outcome of a JSON call to the builder. Errors carry the builder's body text so it can be relayed as is. */
export type BuilderOutcome<T> =
  | { kind: "ok"; value: T }
  /** The builder answered with a registry error body (404 MANIFEST_UNKNOWN, 500 BUILD_FAILED, ...). */
  | { kind: "error"; status: number; bodyText: string; body: RegistryErrorBody }
  /** The builder could not be reached: fetch threw, timed out, or a proxy answered 502/503/504. */
  | { kind: "unavailable"; reason: string }
  /** The builder answered something the worker cannot use (bad signature, malformed JSON...). */
  | { kind: "broken"; reason: string };

/** A configuration problem on the worker's side (e.g. no secret): becomes a 500 that says so. */
export class BuilderConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BuilderConfigError";
  }
}

const RESOLVE_TIMEOUT_MS = 30_000;
/** Builds may take long (Nix); only a hung builder is cut off. */
const BUILD_TIMEOUT_MS = 15 * 60_000;

const PROXY_STATUSES = new Set([502, 503, 504]);

function builderUrl(env: Env, path: string): URL {
  if (!env.BUILDER_URL) throw new BuilderConfigError("BUILDER_URL is not configured for the worker");
  let base: URL;
  try {
    base = new URL(env.BUILDER_URL);
  } catch {
    throw new BuilderConfigError(`BUILDER_URL "${env.BUILDER_URL}" is not a URL`);
  }
  // Keep any path prefix of BUILDER_URL ("https://host/builder" + "/build").
  const prefix = base.pathname.replace(/\/+$/, "");
  return new URL(`${prefix}${path}`, base.origin);
}

function secretOf(env: Env): string {
  if (!env.BUILDER_SECRET) {
    throw new BuilderConfigError(
      "BUILDER_SECRET is not configured for the worker (wrangler secret put BUILDER_SECRET; locally --var or .dev.vars)",
    );
  }
  return env.BUILDER_SECRET;
}

async function signedFetch(
  env: Env,
  method: string,
  path: string,
  body: string,
  extraHeaders: Record<string, string>,
  timeoutMs: number | undefined,
): Promise<Response | { unavailable: string }> {
  const url = builderUrl(env, path);
  const signature = await signRequest(secretOf(env), method, url.pathname + url.search, body);
  const headers: Record<string, string> = { ...extraHeaders, ...signature };
  if (body !== "") headers["Content-Type"] = "application/json";
  try {
    return await fetch(url.toString(), {
      method,
      headers,
      body: body === "" ? undefined : body,
      signal: timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const timedOut = error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError");
    return { unavailable: timedOut ? `no answer from ${url.origin} within ${timeoutMs} ms` : `${url.origin}: ${message}` };
  }
}

async function postJson<T>(
  env: Env,
  path: string,
  request: unknown,
  validate: (value: unknown) => string | null,
  timeoutMs: number,
): Promise<BuilderOutcome<T>> {
  const body = JSON.stringify(request);
  const response = await signedFetch(env, "POST", path, body, { Accept: "application/json" }, timeoutMs);
  if ("unavailable" in response) return { kind: "unavailable", reason: response.unavailable };
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    return { kind: "unavailable", reason: `the connection broke while reading ${path}: ${String(error)}` };
  }
  if (PROXY_STATUSES.has(response.status)) {
    return { kind: "unavailable", reason: `a proxy in front of the builder answered ${response.status} to ${path}` };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text) as unknown;
  } catch {
    return { kind: "broken", reason: `the builder answered ${response.status} to ${path} with a body that is not JSON: ${text.slice(0, 200)}` };
  }
  if (!response.ok) {
    if (!isRegistryErrorBody(parsed)) {
      return { kind: "broken", reason: `the builder answered ${response.status} to ${path}: ${text.slice(0, 300)}` };
    }
    // A 403 DENIED is the package set refusing a package (broken, unfree, ...): the client's to read, not ours.
    if (response.status === 401 || (response.status === 403 && parsed.errors[0].code !== "DENIED")) {
      return {
        kind: "broken",
        reason: `the builder refused the worker's request to ${path} (${parsed.errors[0].message}); check that BUILDER_SECRET matches on both sides and that the clocks agree`,
      };
    }
    return { kind: "error", status: response.status, bodyText: text, body: parsed };
  }
  const problem = validate(parsed);
  if (problem) return { kind: "broken", reason: `the builder's answer to ${path} is malformed: ${problem}` };
  return { kind: "ok", value: parsed as T };
}

function validateResolve(value: unknown): string | null {
  if (typeof value !== "object" || value === null) return "not an object";
  const v = value as Record<string, unknown>;
  if (typeof v.revision !== "string" || v.revision === "") return "revision is missing";
  if (typeof v.source !== "string") return "source is missing";
  if (typeof v.ttlSeconds !== "number" || !(v.ttlSeconds >= 0)) return "ttlSeconds is not a non-negative number";
  return null;
}

function validateManifest(value: unknown, which: string): string | null {
  if (typeof value !== "object" || value === null) return `manifests.${which} is missing`;
  const m = value as Partial<Record<keyof BuiltManifest, unknown>>;
  if (typeof m.digest !== "string" || !isDigest(m.digest)) return `manifests.${which}.digest is not a sha256 digest`;
  if (typeof m.mediaType !== "string") return `manifests.${which}.mediaType is missing`;
  if (typeof m.body !== "string") return `manifests.${which}.body is missing`;
  return null;
}

function validateBuild(value: unknown): string | null {
  if (typeof value !== "object" || value === null) return "not an object";
  const v = value as Record<string, unknown>;
  if (typeof v.imageKey !== "string") return "imageKey is missing";
  if (typeof v.revision !== "string") return "revision is missing";
  if (typeof v.manifests !== "object" || v.manifests === null) return "manifests is missing";
  const manifests = v.manifests as Record<string, unknown>;
  return validateManifest(manifests.oci, "oci") ?? validateManifest(manifests.docker, "docker");
}

export function resolveTag(env: Env, tag: string): Promise<BuilderOutcome<ResolveResult>> {
  const request: ResolveRequest = { tag };
  return postJson<ResolveResult>(env, "/resolve", request, validateResolve, RESOLVE_TIMEOUT_MS);
}

export function buildImage(env: Env, request: BuildRequest): Promise<BuilderOutcome<BuildResult>> {
  return postJson<BuildResult>(env, "/build", request, validateBuild, BUILD_TIMEOUT_MS);
}

/**
 * GET or HEAD a blob from the builder, optionally with a Range header. Returns the builder's response as is
 * (200/206/404/416...), or why it could not be reached. A 502/503/504 counts as unreachable.
 */
export async function fetchBlob(
  env: Env,
  method: "GET" | "HEAD",
  digest: Digest,
  range?: string,
): Promise<Response | { unavailable: string }> {
  const response = await signedFetch(env, method, `/blobs/${digest}`, "", range ? { Range: range } : {}, undefined);
  if ("unavailable" in response) return response;
  if (PROXY_STATUSES.has(response.status)) {
    response.body?.cancel().catch(() => undefined);
    return { unavailable: `a proxy in front of the builder answered ${response.status} for blob ${digest}` };
  }
  return response;
}
