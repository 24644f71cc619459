// The optional redirect of large blob GETs: instead of streaming a blob itself, the worker answers 307 with a URL
// where the client gets the same bytes straight from the bucket. Off unless BLOB_REDIRECT_MIN_BYTES is set.
//
//   BLOB_REDIRECT_MIN_BYTES > 0, and a GET of a blob at least that large:
//     BLOB_REDIRECT_URL set  ->  307 Location: <BLOB_REDIRECT_URL>/<blob key>        (a public, cached custom
//                                                                                  domain of the bucket)
//     else                   ->  307 Location: <R2_S3_ENDPOINT>/<R2_S3_BUCKET>/<blob key>?X-Amz-...  (a SigV4
//                                presigned GET, signed here with aws4fetch, valid BLOB_REDIRECT_TTL_SECONDS)
//   anything else (HEAD, smaller blobs, the redirect off or misconfigured)  ->  null: the worker serves the blob
//
// Why a redirect: the bytes of a large layer then go from the bucket (or Cloudflare's cache of a public domain of
// it) to the client without passing through the worker. docker, podman, skopeo and containerd all follow a 307 on
// a blob GET, sending their Range again, and check what they get against the digest as ever.
//
// The 307 carries Docker-Content-Digest (clients check what they get against it), Cache-Control: no-store (the
// URL expires, so neither the edge nor a proxy may keep the answer) and no body. HEAD is never redirected: its
// size and digest headers come from the worker.
//
// A half-configured redirect never breaks a pull: the settings are read once per isolate and, when they don't
// make a working redirect, the problem is logged once (a JSON "incident" line, as the worker's other failures)
// and blobs are served by the worker as if the redirect were off.
//
// With pull authentication on (pull-credentials.ts), a public domain of the bucket would hand every blob to anyone
// who has its digest: BLOB_REDIRECT_URL is then refused (logged, and the worker serves the blobs); presigned URLs,
// which the worker makes only for a client that passed the check and which end after BLOB_REDIRECT_TTL_SECONDS, stay.
import { AwsClient } from "aws4fetch";
import { blobKey } from "../common/bucket-layout.ts";
import type { Digest } from "../common/digest.ts";
import { pullAuthRequested, type PullAuthEnv } from "./pull-credentials.ts";
import { emptyResponse, logIncident } from "./responses.ts";

/** The redirect's settings, part of the worker's environment (worker/env.ts). */
export interface BlobRedirectEnv {
  /**
   * A GET of a blob of at least this many bytes is answered 307 with a URL where the client gets the bytes straight
   * from the bucket. Unset or "0": off, the worker streams every blob.
   */
  BLOB_REDIRECT_MIN_BYTES?: string;
  /**
   * With the redirect on: a public base URL of the bucket (a custom domain, cached by Cloudflare); a blob is then
   * redirected to `${BLOB_REDIRECT_URL}/${blob key}`. Unset: presigned URLs of R2's S3 API (the R2_S3_ settings).
   */
  BLOB_REDIRECT_URL?: string;
  /** How long a presigned redirect URL is valid, in seconds (default 300, at most 604800). */
  BLOB_REDIRECT_TTL_SECONDS?: string;
  /** R2's S3 API endpoint, without the bucket: https://<ACCOUNT_ID>.r2.cloudflarestorage.com. */
  R2_S3_ENDPOINT?: string;
  /** The bucket's name in the S3 API: the REGISTRY_BUCKET binding's bucket_name. */
  R2_S3_BUCKET?: string;
  /** The access key id of an R2 API token with Object Read on the bucket, for presigning. */
  R2_S3_ACCESS_KEY_ID?: string;
  /** Its secret access key: `wrangler secret put R2_S3_SECRET_ACCESS_KEY`, never a [vars] entry. */
  R2_S3_SECRET_ACCESS_KEY?: string;
}

/** How long a presigned URL stays valid by default: time enough to follow the redirect, short enough to leak little. */
const DEFAULT_REDIRECT_TTL_SECONDS = 300;
/** S3's (and R2's) longest validity of a SigV4 presigned URL: seven days. */
const MAX_REDIRECT_TTL_SECONDS = 604_800;
/** R2's signing region (us-east-1 and "" are its aliases). */
const R2_REGION = "auto";

export type BlobRedirect =
  | { kind: "off" }
  | { kind: "public"; minBytes: number; baseUrl: string }
  | { kind: "presigned"; minBytes: number; bucketUrl: string; ttlSeconds: number; client: AwsClient };

export interface ParsedBlobRedirect {
  redirect: BlobRedirect;
  /** Why a redirect that was asked for is off; empty when the settings are consistent. */
  problems: string[];
}

const isSet = (value: string | undefined): value is string => value !== undefined && value.trim() !== "";

/** A base URL (http or https, no query or fragment) without its trailing slashes, or a problem. */
function baseUrl(name: string, value: string): { url: string } | { problem: string } {
  let url: URL;
  try {
    url = new URL(value.trim());
  } catch {
    return { problem: `${name} is not a URL` };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return { problem: `${name} must be an http or https URL` };
  if (url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") {
    return { problem: `${name} must be a plain base URL, without a query, fragment or credentials` };
  }
  return { url: `${url.origin}${url.pathname.replace(/\/+$/, "")}` };
}

/**
 * The redirect the settings describe. Pure: no logging, no caching (settingsOf does both). Messages name the
 * variables, never their values (a value may be a key).
 */
export function parseBlobRedirect(env: BlobRedirectEnv & PullAuthEnv): ParsedBlobRedirect {
  const off = (problems: string[]): ParsedBlobRedirect => ({ redirect: { kind: "off" }, problems });
  const rawMin = env.BLOB_REDIRECT_MIN_BYTES?.trim() ?? "";
  if (rawMin === "") return off([]);
  if (!/^\d+$/.test(rawMin) || !Number.isSafeInteger(Number(rawMin))) {
    return off([`BLOB_REDIRECT_MIN_BYTES must be a number of bytes (0 or unset: no redirect)`]);
  }
  const minBytes = Number(rawMin);
  if (minBytes === 0) return off([]);

  if (isSet(env.BLOB_REDIRECT_URL)) {
    if (pullAuthRequested(env)) {
      return off([
        "BLOB_REDIRECT_URL would publish every blob while pull authentication is on (PULL_AUTH, PULL_CREDENTIALS); unset it to have blobs redirected to presigned URLs (the R2_S3_ settings) or served by the worker",
      ]);
    }
    const base = baseUrl("BLOB_REDIRECT_URL", env.BLOB_REDIRECT_URL);
    return "problem" in base
      ? off([base.problem])
      : { redirect: { kind: "public", minBytes, baseUrl: base.url }, problems: [] };
  }

  const problems: string[] = [];
  const missing = (
    ["R2_S3_ENDPOINT", "R2_S3_BUCKET", "R2_S3_ACCESS_KEY_ID", "R2_S3_SECRET_ACCESS_KEY"] as const
  ).filter((name) => !isSet(env[name]));
  if (missing.length > 0) {
    problems.push(
      `BLOB_REDIRECT_MIN_BYTES is set without BLOB_REDIRECT_URL, and presigning needs ${missing.join(", ")}`,
    );
  }
  let bucketUrl = "";
  if (isSet(env.R2_S3_ENDPOINT)) {
    const base = baseUrl("R2_S3_ENDPOINT", env.R2_S3_ENDPOINT);
    if ("problem" in base) problems.push(base.problem);
    else bucketUrl = base.url;
  }
  const bucket = env.R2_S3_BUCKET?.trim() ?? "";
  if (bucket !== "" && !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    problems.push("R2_S3_BUCKET is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')");
  }
  let ttlSeconds = DEFAULT_REDIRECT_TTL_SECONDS;
  const rawTtl = env.BLOB_REDIRECT_TTL_SECONDS?.trim() ?? "";
  if (rawTtl !== "") {
    ttlSeconds = Number(rawTtl);
    if (!/^\d+$/.test(rawTtl) || ttlSeconds < 1 || ttlSeconds > MAX_REDIRECT_TTL_SECONDS) {
      problems.push(
        `BLOB_REDIRECT_TTL_SECONDS must be a whole number of seconds from 1 to ${MAX_REDIRECT_TTL_SECONDS} (seven days, S3's limit)`,
      );
    }
  }
  if (problems.length > 0) return off(problems);
  const client = new AwsClient({
    accessKeyId: env.R2_S3_ACCESS_KEY_ID!.trim(),
    secretAccessKey: env.R2_S3_SECRET_ACCESS_KEY!.trim(),
    service: "s3",
    region: R2_REGION,
  });
  return {
    redirect: { kind: "presigned", minBytes, bucketUrl: `${bucketUrl}/${bucket}`, ttlSeconds, client },
    problems: [],
  };
}

/** The object's URL under a base, each segment of the key percent-encoded (blob keys need none today). */
const objectUrl = (base: string, key: string): string => `${base}/${key.split("/").map(encodeURIComponent).join("/")}`;

/** The URL the redirect sends a client to for this blob: public, or presigned for GET at `now`. */
export async function redirectLocation(
  redirect: Exclude<BlobRedirect, { kind: "off" }>,
  digest: Digest,
  now: Date = new Date(),
): Promise<string> {
  const key = blobKey(digest);
  if (redirect.kind === "public") return objectUrl(redirect.baseUrl, key);
  const url = new URL(objectUrl(redirect.bucketUrl, key));
  url.searchParams.set("X-Amz-Expires", String(redirect.ttlSeconds));
  const datetime = now.toISOString().replace(/[:-]|\.\d{3}/g, "");
  const signed = await redirect.client.sign(url.toString(), { method: "GET", aws: { signQuery: true, datetime } });
  return signed.url;
}

/** The settings of this isolate, read again only when the environment's values change. */
let current: { fingerprint: string; redirect: BlobRedirect } | undefined;

function settingsOf(env: BlobRedirectEnv & PullAuthEnv): BlobRedirect {
  const fingerprint = JSON.stringify([
    pullAuthRequested(env),
    env.BLOB_REDIRECT_MIN_BYTES,
    env.BLOB_REDIRECT_URL,
    env.BLOB_REDIRECT_TTL_SECONDS,
    env.R2_S3_ENDPOINT,
    env.R2_S3_BUCKET,
    env.R2_S3_ACCESS_KEY_ID,
    env.R2_S3_SECRET_ACCESS_KEY,
  ]);
  if (current?.fingerprint === fingerprint) return current.redirect;
  const { redirect, problems } = parseBlobRedirect(env);
  if (problems.length > 0) {
    // Once per isolate (per set of values): every blob is still served, by the worker itself.
    logIncident("error", "the blob redirect is not configured correctly, so the worker serves every blob itself", {
      problems,
    });
  }
  current = { fingerprint, redirect };
  return redirect;
}

/**
 * A 307 to the blob outside the worker, or null when the worker is to serve it (not a GET, the redirect off or
 * misconfigured, the blob smaller than BLOB_REDIRECT_MIN_BYTES or not in the bucket). `size` gives the blob's size
 * (null when it is not there); it is asked only when the redirect is on.
 */
export async function blobRedirect(
  request: Request,
  env: BlobRedirectEnv & PullAuthEnv,
  digest: Digest,
  size: () => Promise<number | null>,
): Promise<Response | null> {
  if (request.method !== "GET") return null;
  const redirect = settingsOf(env);
  if (redirect.kind === "off") return null;
  const bytes = await size();
  if (bytes === null || bytes < redirect.minBytes) return null;
  let location: string;
  try {
    location = await redirectLocation(redirect, digest);
  } catch (error) {
    logIncident("error", `could not make the redirect URL of blob ${digest}; the worker serves it itself`, error);
    return null;
  }
  return emptyResponse(307, {
    Location: location,
    "Docker-Content-Digest": digest,
    "Cache-Control": "no-store",
    "Content-Length": "0",
  });
}
