// Calls to the builder services, each signed with the shared secret (common/builder-api.ts). Every call is short:
// no request to a builder stays open long enough for a proxy in front of it (Cloudflare cuts at 100 s) to cut it.
import * as v from "valibot";
import {
  MAX_JOB_WAIT_SECONDS,
  PackageCheckAnswerSchema,
  ResolveResultSchema,
  signRequest,
  type JobRequest,
  type PackageCheckAnswer,
  type PackageCheckRequest,
  type ResolveRequest,
  type ResolveResult,
} from "../common/builder-api.ts";
import { JobRecordSchema, type JobRecord } from "../common/bucket-layout.ts";
import { isRegistryErrorBody, type RegistryErrorBody } from "../common/registry-errors.ts";
import { rankBuilders } from "../common/builder-ranking.ts";
import { BuilderConfigError, builderUrls } from "./builder-pool.ts";
import type { Env } from "./env.ts";

/** The outcome of a JSON call to the builder. Errors carry the builder's body text so it can be relayed as is. */
export type BuilderOutcome<T> =
  | { kind: "ok"; value: T }
  /**
   * The builder answered with a registry error body (404 MANIFEST_UNKNOWN, 500 BUILD_FAILED, 503 BUILDER_BUSY, ...),
   * and with the seconds of its Retry-After header if it sent one.
   */
  | { kind: "error"; status: number; bodyText: string; body: RegistryErrorBody; retryAfterSeconds?: number }
  /** The builder could not be reached: fetch threw, timed out, or a proxy answered 502/503/504. */
  | { kind: "unavailable"; reason: string }
  /** The builder answered something the worker cannot use (bad signature, malformed JSON...). */
  | { kind: "broken"; reason: string };

/** A tag's resolution may fetch a channel's metadata. */
const RESOLVE_TIMEOUT_MS = 25_000;
/** A live builder answers a job request at once, or after the wait the request asks for. */
const JOB_TIMEOUT_MS = (MAX_JOB_WAIT_SECONDS + 5) * 1000;

/** Answers of a proxy in front of a builder that is down or slow: 502-504, and Cloudflare's 520-527 and 530. */
const PROXY_STATUSES = new Set([502, 503, 504, 520, 521, 522, 523, 524, 525, 526, 527, 530]);

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
  base: string,
  method: string,
  path: string,
  body: string,
  extraHeaders: Record<string, string>,
  timeoutMs: number,
): Promise<Response | { unavailable: string }> {
  const url = new URL(path, base);
  const signature = await signRequest(secretOf(env), method, url.pathname + url.search, body);
  const headers: Record<string, string> = { ...extraHeaders, ...signature };
  if (body !== "") headers["Content-Type"] = "application/json";
  const started = Date.now();
  try {
    const response = await fetch(url.toString(), {
      method,
      headers,
      body: body === "" ? undefined : body,
      signal: AbortSignal.timeout(timeoutMs),
    });
    logBuilderCall(method, url, response.status, started);
    return response;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const timedOut = error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError");
    logBuilderCall(method, url, timedOut ? "timeout" : "unreachable", started);
    return {
      unavailable: timedOut ? `no answer from ${url.origin} within ${timeoutMs} ms` : `${url.origin}: ${message}`,
    };
  }
}

/**
 * One structured line per call to a builder, with its duration: what Workers Logs (wrangler.toml [observability])
 * keep and index. The log is the operator's, so it names the builder.
 */
function logBuilderCall(method: string, url: URL, status: number | "timeout" | "unreachable", started: number): void {
  console.log(
    JSON.stringify({
      event: "builder-call",
      method,
      builder: url.origin,
      path: url.pathname,
      status,
      ms: Date.now() - started,
    }),
  );
}

/** What a successful answer must be: its schema, and what to call an answer that is not (null: the schema's message). */
interface ExpectedAnswer<T> {
  schema: v.GenericSchema<unknown, T>;
  otherwise: string | null;
}

async function postJson<T>(
  env: Env,
  base: string,
  path: string,
  request: JobRequest | ResolveRequest | PackageCheckRequest,
  expected: ExpectedAnswer<T>,
  timeoutMs: number,
): Promise<BuilderOutcome<T>> {
  const body = JSON.stringify(request);
  const response = await signedFetch(env, base, "POST", path, body, { Accept: "application/json" }, timeoutMs);
  if ("unavailable" in response) return { kind: "unavailable", reason: response.unavailable };
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    return { kind: "unavailable", reason: `the connection broke while reading ${path}: ${String(error)}` };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text) as unknown;
  } catch {
    parsed = undefined;
  }
  // A builder at its limit of builds answers 503 itself, with its own error: an answer, where a proxy's 503 means none.
  const busy = response.status === 503 && isRegistryErrorBody(parsed) && parsed.errors[0].code === "BUILDER_BUSY";
  if (PROXY_STATUSES.has(response.status) && !busy) {
    return { kind: "unavailable", reason: `a proxy in front of the builder answered ${response.status} to ${path}` };
  }
  if (parsed === undefined) {
    return {
      kind: "broken",
      reason: `the builder answered ${response.status} to ${path} with a body that is not JSON: ${text.slice(0, 200)}`,
    };
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
    const retryAfter = response.headers.get("retry-after")?.trim() ?? "";
    return {
      kind: "error",
      status: response.status,
      bodyText: text,
      body: parsed,
      ...(/^\d{1,6}$/.test(retryAfter) ? { retryAfterSeconds: Number(retryAfter) } : {}),
    };
  }
  const answer = v.safeParse(expected.schema, parsed, { abortEarly: true });
  if (!answer.success) {
    const problem = expected.otherwise ?? answer.issues[0].message;
    return { kind: "broken", reason: `the builder's answer to ${path} is malformed: ${problem}` };
  }
  return { kind: "ok", value: answer.output };
}

const RESOLVE_ANSWER: ExpectedAnswer<ResolveResult> = { schema: ResolveResultSchema, otherwise: null };
const JOB_ANSWER: ExpectedAnswer<JobRecord> = { schema: JobRecordSchema, otherwise: "not a job record" };

/**
 * Resolves a tag with the builders ranked for it, the next one when one is unreachable: every builder serves the same
 * package source.
 */
export async function resolveTag(env: Env, tag: string): Promise<BuilderOutcome<ResolveResult>> {
  const request: ResolveRequest = { tag };
  let outcome: BuilderOutcome<ResolveResult> | null = null;
  for (const base of await rankBuilders(builderUrls(env.BUILDER_URL), `resolve\n${tag}`)) {
    outcome = await postJson(env, base, "/resolve", request, RESOLVE_ANSWER, RESOLVE_TIMEOUT_MS);
    if (outcome.kind !== "unavailable" && !isBuilderBusy(outcome)) return outcome;
  }
  return outcome!;
}

const PACKAGES_ANSWER: ExpectedAnswer<PackageCheckAnswer> = {
  schema: PackageCheckAnswerSchema,
  otherwise: "not a package check",
};
/** A package check may read the set's names from Nix the first time a revision is asked about. */
const PACKAGES_TIMEOUT_MS = 25_000;

/** What each name is in the package set (the front page's composer), from the builders ranked for the revision. */
export async function checkPackages(
  env: Env,
  request: PackageCheckRequest,
): Promise<BuilderOutcome<PackageCheckAnswer>> {
  let outcome: BuilderOutcome<PackageCheckAnswer> | null = null;
  for (const base of await rankBuilders(builderUrls(env.BUILDER_URL), `packages\n${request.revision}`)) {
    outcome = await postJson(env, base, "/packages", request, PACKAGES_ANSWER, PACKAGES_TIMEOUT_MS);
    if (outcome.kind !== "unavailable" && !isBuilderBusy(outcome)) return outcome;
  }
  return outcome!;
}

/** The builder's answer that it runs and queues as many builds as it may (503 BUILDER_BUSY): another builder may not. */
export function isBuilderBusy<T>(outcome: BuilderOutcome<T>): outcome is Extract<BuilderOutcome<T>, { kind: "error" }> {
  return outcome.kind === "error" && outcome.status === 503 && outcome.body.errors[0].code === "BUILDER_BUSY";
}

/** Starts the image's build job on this builder, or asks after it: answered at once with the job's record. */
export function submitJob(env: Env, base: string, request: JobRequest): Promise<BuilderOutcome<JobRecord>> {
  return postJson(env, base, "/jobs", request, JOB_ANSWER, JOB_TIMEOUT_MS);
}
