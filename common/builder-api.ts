// The contract between the worker and the builder: request and response shapes, and request signing.
// Every builder endpoint but /health and /ready requires a signature, so an exposed builder is not a free build farm.
import { hmacSha256Hex, sha256Hex } from "./digest.ts";
import type { NixSystem } from "./image-name.ts";

export const SIGNATURE_HEADER = "x-builder-signature";
export const TIMESTAMP_HEADER = "x-builder-timestamp";
/** How old a signed request may be; a captured request is useless after this. */
export const SIGNATURE_MAX_AGE_SECONDS = 60;

export interface ResolveRequest {
  tag: string;
}

export interface ResolveResult {
  /** What the tag points at now: a commit, or a content hash for a local package set. */
  revision: string;
  /** Where packages come from, for the image's org.opencontainers.image.source annotation. */
  source: string;
  /** Seconds the resolution may be reused; 0 never expires (pinned revisions). */
  ttlSeconds: number;
}

export interface BuildRequest {
  packages: string[];
  system: NixSystem;
  tag: string;
  revision: string;
}

/** POST /jobs: start the image's build, or report on it. Answered at once with the job's JobRecord. */
export interface JobRequest extends BuildRequest {
  /**
   * The caller's id for the job. A running job of the same image is reported whatever its id (the caller adopts
   * it); a finished job is reported only to the id that started it, and any other id starts a new job.
   */
  jobId: string;
  /**
   * With a running job: hold the answer until the job finishes or this many seconds pass (at most
   * MAX_JOB_WAIT_SECONDS), so that the caller hears of the end at once without asking every moment.
   */
  waitSeconds?: number;
}

/** Well inside the 100 s after which Cloudflare cuts a request to an origin that hasn't answered. */
export const MAX_JOB_WAIT_SECONDS = 10;

function signedMessage(method: string, pathAndQuery: string, timestamp: string, bodyHash: string): string {
  return `${method.toUpperCase()}\n${pathAndQuery}\n${timestamp}\n${bodyHash}`;
}

export async function signRequest(
  secret: string,
  method: string,
  pathAndQuery: string,
  body: string,
  now: number = Date.now(),
): Promise<Record<string, string>> {
  const timestamp = String(Math.floor(now / 1000));
  const signature = await hmacSha256Hex(secret, signedMessage(method, pathAndQuery, timestamp, await sha256Hex(body)));
  return { [SIGNATURE_HEADER]: signature, [TIMESTAMP_HEADER]: timestamp };
}

export type SignatureCheck = { ok: true } | { ok: false; reason: string };

export async function verifyRequest(
  secret: string,
  method: string,
  pathAndQuery: string,
  body: string,
  headers: { signature: string | undefined; timestamp: string | undefined },
  now: number = Date.now(),
): Promise<SignatureCheck> {
  if (!headers.signature || !headers.timestamp) return { ok: false, reason: "the request is not signed" };
  if (!/^\d{1,12}$/.test(headers.timestamp)) return { ok: false, reason: "the signature timestamp is malformed" };
  const age = Math.abs(now / 1000 - Number(headers.timestamp));
  if (age > SIGNATURE_MAX_AGE_SECONDS) {
    return { ok: false, reason: `the signature is ${Math.round(age)} s old; requests are accepted for ${SIGNATURE_MAX_AGE_SECONDS} s (check both clocks)` };
  }
  const expected = await hmacSha256Hex(secret, signedMessage(method, pathAndQuery, headers.timestamp, await sha256Hex(body)));
  if (!timingSafeEqualHex(expected, headers.signature)) return { ok: false, reason: "the signature does not match" };
  return { ok: true };
}

function timingSafeEqualHex(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
