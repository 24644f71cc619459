// The contract between the worker and the builder: request and response shapes, and request signing.
// Every builder endpoint but /health and /ready requires a signature, so an exposed builder is not a free build farm;
// those two say nothing but "up" and "ready or not" (GET /status, signed, has the rest).
// A signature covers a random nonce too, and the builder remembers the nonces it accepted for as long as their
// signatures are valid: a captured request can't be sent again, not even within the signature window.
import * as v from "valibot";
import { hmacSha256Hex, sha256Hex } from "./digest.ts";
import { LAYER_COMPRESSIONS, MAX_PACKAGES, type NixSystem } from "./image-name.ts";
import { fieldsObject } from "./schema-messages.ts";

export const SIGNATURE_HEADER = "x-builder-signature";
export const TIMESTAMP_HEADER = "x-builder-timestamp";
export const NONCE_HEADER = "x-builder-nonce";
/** How old a signed request may be; a captured request is useless after this. */
const SIGNATURE_MAX_AGE_SECONDS = 60;
/** Well inside the 100 s after which Cloudflare cuts a request to an origin that hasn't answered. */
export const MAX_JOB_WAIT_SECONDS = 10;

// The request and answer bodies, as schemas: the builder checks what it is sent, the worker what it is answered,
// and the types are the schemas' outputs.

export const ResolveRequestSchema = v.object({ tag: v.string() });
export type ResolveRequest = v.InferOutput<typeof ResolveRequestSchema>;

const TTL_SECONDS = "ttlSeconds is not a non-negative number";

export const ResolveResultSchema = fieldsObject(
  {
    /** What the tag points at now: a commit, or a content hash for a local package set. */
    revision: v.pipe(v.string("revision is missing"), v.nonEmpty("revision is missing")),
    /** Where packages come from, for the image's org.opencontainers.image.source annotation. */
    source: v.string("source is missing"),
    /** Seconds the resolution may be reused; 0 never expires (pinned revisions). */
    ttlSeconds: v.pipe(v.number(TTL_SECONDS), v.minValue(0, TTL_SECONDS)),
  },
  "not an object",
);
export type ResolveResult = v.InferOutput<typeof ResolveResultSchema>;

/** An attribute path: components of letters, digits, '_', '-', '+', '\'' separated by dots. */
export const ATTRIBUTE_PATH = /^[A-Za-z0-9_][A-Za-z0-9_+'-]*(\.[A-Za-z0-9_][A-Za-z0-9_+'-]*)*$/;
const NIX_SYSTEMS: readonly NixSystem[] = ["x86_64-linux", "aarch64-linux"];

const packageCount = (issue: v.BaseIssue<unknown>) =>
  `an image holds 1 to ${MAX_PACKAGES} packages, not ${Array.isArray(issue.input) ? issue.input.length : "none"}`;
const notAnAttributePath = (issue: v.BaseIssue<unknown>) => `"${String(issue.input)}" is not a package attribute path`;
const TAG_AND_REVISION = "the build request needs a tag and the revision it resolved to";

/** What an image is built from. The builder checks it all before any of it reaches Nix (builder-service/build-request.ts). */
const buildRequestEntries = {
  // The count first, then each name: an oversized list is refused for its size whatever it holds.
  packages: v.pipe(
    v.array(v.unknown(), packageCount),
    v.minLength(1, packageCount),
    v.maxLength(MAX_PACKAGES, packageCount),
    v.array(
      v.pipe(
        v.string(notAnAttributePath),
        v.maxLength(255, notAnAttributePath),
        v.regex(ATTRIBUTE_PATH, notAnAttributePath),
      ),
    ),
  ),
  system: v.picklist(NIX_SYSTEMS, `system must be one of ${NIX_SYSTEMS.join(", ")}`),
  /** Absent from requests of workers older than zstd layers: gzip. */
  compression: v.optional(
    v.picklist(LAYER_COMPRESSIONS, `compression must be one of ${LAYER_COMPRESSIONS.join(", ")}`),
    "gzip",
  ),
  tag: v.string(TAG_AND_REVISION),
  revision: v.pipe(v.string(TAG_AND_REVISION), v.regex(/^[0-9a-z]{1,64}$/, TAG_AND_REVISION)),
};

export const BuildRequestSchema = fieldsObject(buildRequestEntries, "the build request is not a JSON object");
export type BuildRequest = v.InferOutput<typeof BuildRequestSchema>;

/** POST /packages: what each name is in the package set at `revision` (the front page's composer asks). */
export const PackageCheckRequestSchema = fieldsObject(
  {
    packages: buildRequestEntries.packages,
    system: buildRequestEntries.system,
    revision: buildRequestEntries.revision,
  },
  "the package check is not a JSON object",
);
export type PackageCheckRequest = v.InferOutput<typeof PackageCheckRequestSchema>;

const PackageCheckSchema = v.object({
  name: v.string(),
  /** found: the set has it (attribute: where; aliasOf: the package an alias stands for); unknown: it has not
   * (suggestions: the closest names); removed or refused: the set's own reason (message). */
  status: v.picklist(["found", "unknown", "removed", "refused"]),
  attribute: v.optional(v.string()),
  aliasOf: v.optional(v.string()),
  suggestions: v.optional(v.array(v.string())),
  message: v.optional(v.string()),
});
export type PackageCheck = v.InferOutput<typeof PackageCheckSchema>;

export const PackageCheckAnswerSchema = v.object({
  revision: v.string(),
  packages: v.array(PackageCheckSchema),
  /** The image's unpacked closure size, when the builder already has every store path of it; else null. */
  closureBytes: v.nullable(v.number()),
});
export type PackageCheckAnswer = v.InferOutput<typeof PackageCheckAnswerSchema>;

const WAIT_SECONDS = `waitSeconds is a number of seconds from 0 to ${MAX_JOB_WAIT_SECONDS}`;
const JOB_ID = "the job request needs a jobId of 1 to 64 letters, digits and dashes";

/** POST /jobs: start the image's build, or report on it. Answered at once with the job's JobRecord. */
export const JobRequestSchema = fieldsObject(
  {
    ...buildRequestEntries,
    /**
     * The caller's id for the job (a UUID, or any short token of letters, digits and dashes). A running job of the
     * same image is reported whatever its id (the caller adopts it); a finished job is reported only to the id that
     * started it, and any other id starts a new job.
     */
    jobId: v.pipe(v.string(JOB_ID), v.regex(/^[A-Za-z0-9-]{1,64}$/, JOB_ID)),
    /**
     * With a running job: hold the answer until the job finishes or this many seconds pass (at most
     * MAX_JOB_WAIT_SECONDS), so that the caller hears of the end at once without asking every moment.
     */
    waitSeconds: v.optional(
      v.pipe(v.number(WAIT_SECONDS), v.minValue(0, WAIT_SECONDS), v.maxValue(MAX_JOB_WAIT_SECONDS, WAIT_SECONDS)),
    ),
  },
  "the build request is not a JSON object",
);
export type JobRequest = v.InferOutput<typeof JobRequestSchema>;

/**
 * GET /status (signed): what the unsigned /health and /ready leave out, for operators and tests. `problem` says why
 * the builder is not ready; `store` names the bucket and its endpoint.
 */
export const BuilderStatusSchema = v.object({
  ready: v.boolean(),
  problem: v.nullable(v.string()),
  store: v.string(),
  source: v.string(),
  /** The counters since the builder started (builder-service/image-builder.ts BuilderCounters says what each counts). */
  builds: v.number(),
  layersWritten: v.number(),
  layersReused: v.number(),
  tarBytesWritten: v.number(),
  bytesStored: v.number(),
  jobs: v.object({ started: v.number(), done: v.number(), failed: v.number(), running: v.number() }),
});
export type BuilderStatus = v.InferOutput<typeof BuilderStatusSchema>;

function signedMessage(
  method: string,
  pathAndQuery: string,
  timestamp: string,
  nonce: string,
  bodyHash: string,
): string {
  return `${method.toUpperCase()}\n${pathAndQuery}\n${timestamp}\n${nonce}\n${bodyHash}`;
}

/** 128 random bits as hex: no two requests share one, whatever the rate. */
const NONCE = /^[0-9a-f]{32}$/;

function newNonce(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function signRequest(
  secret: string,
  method: string,
  pathAndQuery: string,
  body: string,
  now: number = Date.now(),
): Promise<Record<string, string>> {
  const timestamp = String(Math.floor(now / 1000));
  const nonce = newNonce();
  const signature = await hmacSha256Hex(
    secret,
    signedMessage(method, pathAndQuery, timestamp, nonce, await sha256Hex(body)),
  );
  return { [SIGNATURE_HEADER]: signature, [TIMESTAMP_HEADER]: timestamp, [NONCE_HEADER]: nonce };
}

/** `busy`: the builder holds as many nonces as it may (see SeenNonces); the request may be sent again later. */
export type SignatureCheck = { ok: true } | { ok: false; reason: string; busy?: { retryAfterSeconds: number } };

/**
 * The nonces of accepted requests, each kept until its signature's window closes (timestamp + 60 s): a nonce seen
 * again within that time is a replay, and after it the timestamp check refuses the request anyway.
 *
 * Memory is bounded: at most `capacity` nonces (100,000, some 10 MB: over 1,600 signed requests a second, each
 * kept about 60 s). When that many are live, new requests are refused (busy) until the oldest expire, rather than
 * forgetting a nonce that could then be replayed. Only correctly signed requests are remembered, so only a holder
 * of the secret can fill it.
 */
export class SeenNonces {
  /** nonce -> the second (since the epoch) its request stops being accepted; in arrival order. */
  private readonly until = new Map<string, number>();

  constructor(readonly capacity = 100_000) {}

  get size(): number {
    return this.until.size;
  }

  /** Remembers the nonce unless it is known already ("replayed") or the memory is full ("full"). */
  admit(nonce: string, timestampSeconds: number, nowMs: number = Date.now()): "fresh" | "replayed" | "full" {
    const now = nowMs / 1000;
    this.forgetExpired(now, false);
    if (this.until.has(nonce)) return "replayed";
    // Arrival order is nearly expiry order but not quite (clocks differ): look at every entry before refusing.
    if (this.until.size >= this.capacity) this.forgetExpired(now, true);
    if (this.until.size >= this.capacity) return "full";
    this.until.set(nonce, timestampSeconds + SIGNATURE_MAX_AGE_SECONDS);
    return "fresh";
  }

  /** Seconds until the oldest remembered nonce expires, for Retry-After. */
  secondsUntilRoom(nowMs: number = Date.now()): number {
    let soonest = Infinity;
    for (const expiry of this.until.values()) soonest = Math.min(soonest, expiry);
    return Math.max(1, Math.ceil(soonest - nowMs / 1000));
  }

  private forgetExpired(now: number, everywhere: boolean): void {
    for (const [nonce, expiry] of this.until) {
      if (expiry < now) this.until.delete(nonce);
      else if (!everywhere) return;
    }
  }
}

export async function verifyRequest(
  secret: string,
  method: string,
  pathAndQuery: string,
  body: string,
  headers: { signature: string | undefined; timestamp: string | undefined; nonce: string | undefined },
  seen: SeenNonces,
  now: number = Date.now(),
): Promise<SignatureCheck> {
  if (!headers.signature || !headers.timestamp) return { ok: false, reason: "the request is not signed" };
  if (!headers.nonce) {
    return {
      ok: false,
      reason: `the request carries no nonce (${NONCE_HEADER}); the worker must be as new as the builder`,
    };
  }
  if (!NONCE.test(headers.nonce))
    return { ok: false, reason: "the request's nonce is not 32 lower-case hex characters" };
  if (!/^\d{1,12}$/.test(headers.timestamp)) return { ok: false, reason: "the signature timestamp is malformed" };
  const age = Math.abs(now / 1000 - Number(headers.timestamp));
  if (age > SIGNATURE_MAX_AGE_SECONDS) {
    return {
      ok: false,
      reason: `the signature is ${Math.round(age)} s old; requests are accepted for ${SIGNATURE_MAX_AGE_SECONDS} s (check both clocks)`,
    };
  }
  const expected = await hmacSha256Hex(
    secret,
    signedMessage(method, pathAndQuery, headers.timestamp, headers.nonce, await sha256Hex(body)),
  );
  if (!timingSafeEqualHex(expected, headers.signature)) return { ok: false, reason: "the signature does not match" };
  // Only now: a request that is not correctly signed must not take a place in the memory.
  const admitted = seen.admit(headers.nonce, Number(headers.timestamp), now);
  if (admitted === "replayed") {
    return {
      ok: false,
      reason: `the request was replayed: its nonce was used already (nonces are remembered for ${SIGNATURE_MAX_AGE_SECONDS} s)`,
    };
  }
  if (admitted === "full") {
    const retryAfterSeconds = seen.secondsUntilRoom(now);
    return {
      ok: false,
      reason: `the builder holds the nonces of ${seen.capacity} signed requests from the last ${SIGNATURE_MAX_AGE_SECONDS} s, its limit; try again in ${retryAfterSeconds} s`,
      busy: { retryAfterSeconds },
    };
  }
  return { ok: true };
}

function timingSafeEqualHex(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
