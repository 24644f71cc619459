// A local S3 endpoint over the local R2 bucket: what R2's S3 API is in production, for the local stack.
// Miniflare runs it next to the registry worker, bound to the same R2 bucket, so the builder's S3 blob store
// (builder-service/s3/store.ts) writes into the very bucket the registry worker serves from.
//
// It speaks the subset of the S3 REST API (path style, /<bucket>/<key>) that the builder uses, and the presigned
// GET the registry worker's blob redirect sends clients to (worker/blob-redirect.ts):
//
//   PUT    /<bucket>/<key>                          PutObject (Content-Type, Content-MD5, x-amz-meta-*)
//   HEAD   /<bucket>/<key>                          HeadObject
//   GET    /<bucket>/<key>                          GetObject, Range: bytes=a-b | a- | -n (206 + Content-Range)
//   GET|HEAD /<bucket>/<key>?X-Amz-Algorithm=...    the same, authenticated by a presigned URL
//   DELETE /<bucket>/<key>                          DeleteObject (204)
//   POST   /<bucket>/<key>?uploads                  CreateMultipartUpload (XML with the UploadId)
//   PUT    /<bucket>/<key>?partNumber=N&uploadId=U  UploadPart (ETag header)
//   POST   /<bucket>/<key>?uploadId=U               CompleteMultipartUpload (XML list of parts in, XML out)
//   DELETE /<bucket>/<key>?uploadId=U               AbortMultipartUpload (204)
//   GET    /<bucket>?list-type=2&prefix=P&continuation-token=T&max-keys=N   ListObjectsV2 (at most 1000 a page)
//   POST   /<bucket>?delete                         DeleteObjects (XML list of at most 1000 keys in, XML out)
//   GET|HEAD /                                      200, unauthenticated: a readiness probe
//
// Everything else is 501 NotImplemented: ListObjects v1, delimiters, copies, conditional requests, presigned URLs
// for other methods, aws-chunked bodies. As R2 and S3 do, it
//   - checks SigV4 in both its forms, the Authorization header and the presigned URL (X-Amz-Algorithm,
//     -Credential, -Date, -Expires, -SignedHeaders and -Signature in the query, payload UNSIGNED-PAYLOAD): the
//     request is signed again with the configured secret (aws4fetch's signer, the received date, exactly the
//     headers named in SignedHeaders) and the signatures compared: wrong key 403 InvalidAccessKeyId, wrong
//     signature 403 SignatureDoesNotMatch, unsigned 403 AccessDenied; a presigned URL past X-Amz-Date +
//     X-Amz-Expires 403 AccessDenied "Request has expired", X-Amz-Expires over a week 400
//     AuthorizationQueryParametersError, both forms at once 400 InvalidArgument; another bucket 404 NoSuchBucket;
//   - checks bodies against their signed x-amz-content-sha256 (400 XAmzContentSHA256Mismatch) and Content-MD5
//     (400 BadDigest): a PutObject's sha256 goes to R2's put, which refuses a body that doesn't match (the
//     binding takes one hash only: the md5 is checked on the way); an UploadPart's body is hashed on the way to
//     R2 (uploadPart checks nothing). Bodies checked on the way have their last bytes held back until the
//     hashes are known to match, so R2 never receives the whole of a body that fails; a body shorter than its
//     Content-Length is never stored either (400 IncompleteBody);
//   - streams bodies both ways: nothing holds a whole object or part in memory.
//
// Long because it is a small S3 server (SigV4 in headers and query strings, objects, multipart, S3's XML errors) for
// the local stack, never deployed.
import { AwsV4Signer } from "aws4fetch";
import { decodeXml, escapeXml } from "../../common/s3-xml.ts";

export interface Env {
  REGISTRY_BUCKET: R2Bucket;
  S3_ACCESS_KEY_ID: string;
  S3_SECRET_ACCESS_KEY: string;
  /** The bucket name the S3 API answers to (the R2 bucket's name, as in production). */
  S3_BUCKET: string;
}

const S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/";
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const EMPTY_MD5_BASE64 = "1B2M2Y8AsgTpgAmY7PhCfg==";
/** S3's largest single PUT and largest part. */
const MAX_PUT_BYTES = 5 * 1024 ** 3;
/** A CompleteMultipartUpload body of 10,000 parts is about 1 MB. */
const MAX_COMPLETE_BODY_BYTES = 2 * 1024 * 1024;
const MAX_PART_NUMBER = 10_000;
/** S3 refuses requests whose x-amz-date is further than this from its clock. */
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
/** Regions R2 accepts in a signature's scope (us-east-1 and the empty one are aliases of auto). */
const R2_REGIONS = new Set(["auto", "us-east-1", ""]);
/** Conditional request headers: S3 supports them, this endpoint does not (refused rather than ignored). */
const CONDITIONAL_HEADERS = ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since"];

/** Signing keys by secret, date, region and service (aws4fetch's cache). */
const signingKeys = new Map<string, ArrayBuffer>();

/** An S3 error answer. */
class S3Failure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** More elements of the error document, as S3 adds them (an expired URL's Expires and ServerTime). */
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

const notImplemented = (what: string) =>
  new S3Failure(
    501,
    "NotImplemented",
    `${what} is not implemented by this local S3 endpoint (it serves what the builder uses)`,
  );

function requestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return [...bytes]
    .map((b) => b.toString(16).padStart(2, "0"))
    .join("")
    .toUpperCase();
}

function xmlResponse(status: number, xml: string, headers: Headers = new Headers()): Response {
  headers.set("content-type", "application/xml");
  return new Response(`<?xml version="1.0" encoding="UTF-8"?>${xml}`, { status, headers });
}

function errorResponse(method: string, failure: S3Failure): Response {
  const extra = Object.entries(failure.extra)
    .map(([name, value]) => `<${name}>${escapeXml(value)}</${name}>`)
    .join("");
  const xml = `<Error><Code>${escapeXml(failure.code)}</Code><Message>${escapeXml(failure.message)}</Message>${extra}</Error>`;
  const response = xmlResponse(failure.status, xml);
  // HEAD answers carry no body, as S3's don't.
  return method === "HEAD" ? new Response(null, { status: failure.status, headers: response.headers }) : response;
}

// --- encodings ---------------------------------------------------------------------------------------------------

function bytesToHex(bytes: ArrayBuffer | Uint8Array): string {
  return [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function base64ToBytes(text: string): Uint8Array | null {
  try {
    const binary = atob(text);
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && crypto.subtle.timingSafeEqual(a, b);
}

// --- authentication ----------------------------------------------------------------------------------------------

const AUTHORIZATION =
  /^AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})$/;
/** The parameters of a presigned URL (query-string authentication), as S3 names them when one is missing. */
const QUERY_AUTH_PARAMS = [
  "X-Amz-Algorithm",
  "X-Amz-Credential",
  "X-Amz-Signature",
  "X-Amz-Date",
  "X-Amz-SignedHeaders",
  "X-Amz-Expires",
];
/** S3's longest validity of a presigned URL (seven days). */
const MAX_PRESIGNED_EXPIRES_SECONDS = 604_800;

/** What both forms of SigV4 carry: who signed, when, for which scope, which headers, and the signature. */
interface SignedRequest {
  credential: string;
  amzDate: string;
  signedHeadersText: string;
  signature: string;
}

const isPresigned = (url: URL) => QUERY_AUTH_PARAMS.some((name) => url.searchParams.has(name));

/**
 * Checks the request's SigV4 signature against the configured credentials, in either form S3 takes: the
 * Authorization header, or a presigned URL (query-string authentication, GET and HEAD only here).
 */
async function authenticate(request: Request, url: URL, env: Env): Promise<void> {
  const authorization = request.headers.get("authorization");
  if (isPresigned(url)) {
    if (authorization !== null) {
      throw new S3Failure(
        400,
        "InvalidArgument",
        "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
      );
    }
    return authenticateQuery(request, url, env);
  }
  if (authorization === null) {
    throw new S3Failure(
      403,
      "AccessDenied",
      "Access Denied: the request is not signed (SigV4 in the Authorization header or a presigned URL)",
    );
  }
  const match = AUTHORIZATION.exec(authorization.trim());
  if (!match) {
    throw new S3Failure(
      400,
      "AuthorizationHeaderMalformed",
      "The authorization header is malformed; expected AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=<64 hex>",
    );
  }
  const [, credential, signedHeadersText, signature] = match;
  const amzDate = request.headers.get("x-amz-date");
  const signed = { credential, signedHeadersText, signature, amzDate: amzDate ?? "" };
  const { accessKeyId, region } = checkScope(signed, env, "AuthorizationHeaderMalformed");
  const signedAt = parseAmzDate(amzDate);
  checkScopeDate(signed, "AuthorizationHeaderMalformed");
  if (Math.abs(Date.now() - signedAt) > MAX_CLOCK_SKEW_MS) {
    throw new S3Failure(
      403,
      "RequestTimeTooSkewed",
      "The difference between the request time and the current time is too large.",
    );
  }
  checkNoUnsignedAmzHeaders(request, signedHeadersText);
  if (!request.headers.has("x-amz-content-sha256")) {
    throw new S3Failure(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256");
  }
  // Sign the request again as the client should have: same method, URL, date and signed headers (host is taken
  // from the URL, which workerd builds from the Host header), this endpoint's secret.
  const signer = new AwsV4Signer({
    method: request.method,
    url: request.url,
    headers: signedHeaderValues(request, signedHeadersText),
    accessKeyId,
    secretAccessKey: env.S3_SECRET_ACCESS_KEY,
    service: "s3",
    region,
    datetime: signed.amzDate,
    allHeaders: true,
    cache: signingKeys,
  });
  await compareSignatures(signer, signed);
}

/**
 * A presigned URL: the X-Amz-* parameters instead of the Authorization header, the payload UNSIGNED-PAYLOAD, and a
 * validity of X-Amz-Expires seconds from X-Amz-Date (past it: 403 AccessDenied "Request has expired", as S3 says).
 */
async function authenticateQuery(request: Request, url: URL, env: Env): Promise<void> {
  const params = url.searchParams;
  if (QUERY_AUTH_PARAMS.some((name) => !params.has(name))) {
    throw new S3Failure(
      400,
      "AuthorizationQueryParametersError",
      "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
    );
  }
  if (params.get("X-Amz-Algorithm") !== "AWS4-HMAC-SHA256") {
    throw new S3Failure(400, "AuthorizationQueryParametersError", 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"');
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    throw notImplemented(`A presigned ${request.method} (presigned URLs are taken for GET and HEAD)`);
  }
  const signed: SignedRequest = {
    credential: params.get("X-Amz-Credential")!,
    amzDate: params.get("X-Amz-Date")!,
    signedHeadersText: params.get("X-Amz-SignedHeaders")!,
    signature: params.get("X-Amz-Signature")!,
  };
  const { accessKeyId, region } = checkScope(signed, env, "AuthorizationQueryParametersError");
  const signedAt = parseAmzDate(signed.amzDate);
  checkScopeDate(signed, "AuthorizationQueryParametersError");
  const expiresText = params.get("X-Amz-Expires")!;
  if (!/^\d+$/.test(expiresText)) {
    throw new S3Failure(400, "AuthorizationQueryParametersError", "X-Amz-Expires should be a number");
  }
  const expires = Number(expiresText);
  if (expires > MAX_PRESIGNED_EXPIRES_SECONDS) {
    throw new S3Failure(
      400,
      "AuthorizationQueryParametersError",
      `X-Amz-Expires must be less than a week (in seconds) that is ${MAX_PRESIGNED_EXPIRES_SECONDS}`,
    );
  }
  if (!signed.signedHeadersText.split(";").includes("host")) {
    throw new S3Failure(400, "AuthorizationQueryParametersError", "X-Amz-SignedHeaders must include host");
  }
  const now = Date.now();
  if (signedAt - now > MAX_CLOCK_SKEW_MS) throw new S3Failure(403, "AccessDenied", "Request is not valid yet");
  if (now > signedAt + expires * 1000) {
    throw new S3Failure(403, "AccessDenied", "Request has expired", {
      "X-Amz-Expires": expiresText,
      Expires: new Date(signedAt + expires * 1000).toISOString(),
      ServerTime: new Date(now).toISOString(),
    });
  }
  checkNoUnsignedAmzHeaders(request, signed.signedHeadersText);
  // Sign the URL again without its signature: aws4fetch's signer puts back the same X-Amz-* parameters (it sets
  // Algorithm, Credential, Date and SignedHeaders from what it is given, and keeps Expires), sorts the query and
  // signs UNSIGNED-PAYLOAD, as S3 does for query-string authentication.
  const unsigned = new URL(request.url);
  unsigned.searchParams.delete("X-Amz-Signature");
  const signer = new AwsV4Signer({
    method: request.method,
    url: unsigned.toString(),
    headers: signedHeaderValues(request, signed.signedHeadersText),
    accessKeyId,
    secretAccessKey: env.S3_SECRET_ACCESS_KEY,
    service: "s3",
    region,
    datetime: signed.amzDate,
    signQuery: true,
    allHeaders: true,
    cache: signingKeys,
  });
  await compareSignatures(signer, signed);
}

/** The access key and region of a credential scope (<key>/<date>/<region>/s3/aws4_request), checked as R2 checks them. */
function checkScope(
  signed: SignedRequest,
  env: Env,
  malformed: "AuthorizationHeaderMalformed" | "AuthorizationQueryParametersError",
): { accessKeyId: string; region: string } {
  const scope = signed.credential.split("/");
  if (scope.length !== 5) throw new S3Failure(400, malformed, `The credential ${signed.credential} is malformed`);
  const [accessKeyId, , region, service, terminator] = scope;
  if (accessKeyId !== env.S3_ACCESS_KEY_ID) {
    throw new S3Failure(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.");
  }
  if (service !== "s3" || terminator !== "aws4_request") {
    throw new S3Failure(
      400,
      malformed,
      `The credential scope ${scope.slice(1).join("/")} is not <date>/<region>/s3/aws4_request`,
    );
  }
  if (!R2_REGIONS.has(region)) {
    const what =
      malformed === "AuthorizationHeaderMalformed"
        ? "The authorization header is malformed"
        : "Error parsing the X-Amz-Credential parameter";
    throw new S3Failure(400, malformed, `${what}; the region '${region}' is wrong; expecting 'auto'`);
  }
  return { accessKeyId, region };
}

/** The scope's date must be the signature's (x-amz-date or X-Amz-Date). */
function checkScopeDate(
  signed: SignedRequest,
  malformed: "AuthorizationHeaderMalformed" | "AuthorizationQueryParametersError",
): void {
  const scopeDate = signed.credential.split("/")[1];
  if (signed.amzDate.slice(0, 8) !== scopeDate) {
    throw new S3Failure(
      400,
      malformed,
      `Invalid credential date ${scopeDate}: it must be the date of x-amz-date ${signed.amzDate}`,
    );
  }
}

/** An x-amz-date value (20060102T150405Z) as milliseconds since the epoch. */
function parseAmzDate(amzDate: string | null): number {
  const dateMatch = amzDate === null ? null : /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (dateMatch === null)
    throw new S3Failure(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header");
  const [, y, mo, d, h, mi, s] = dateMatch.map(Number);
  return Date.UTC(y, mo - 1, d, h, mi, s);
}

/** S3 refuses x-amz-* headers that the signature does not cover. */
function checkNoUnsignedAmzHeaders(request: Request, signedHeadersText: string): void {
  const signedHeaders = signedHeadersText.split(";");
  const unsigned = [...request.headers.keys()].filter(
    (name) => name.startsWith("x-amz-") && !signedHeaders.includes(name),
  );
  if (unsigned.length > 0) {
    throw new S3Failure(
      403,
      "AccessDenied",
      `There were headers present in the request which were not signed: ${unsigned.join(", ")}`,
    );
  }
}

/** The request's values of the signed headers (host aside: the signer takes it from the URL). */
function signedHeaderValues(request: Request, signedHeadersText: string): Headers {
  const headers = new Headers();
  for (const name of signedHeadersText.split(";")) {
    const value = request.headers.get(name);
    if (name !== "host" && value !== null) headers.set(name, value);
  }
  return headers;
}

async function compareSignatures(signer: AwsV4Signer, signed: SignedRequest): Promise<void> {
  const expected = await signer.signature();
  const encoder = new TextEncoder();
  if (
    signer.signedHeaders !== signed.signedHeadersText ||
    !equalBytes(encoder.encode(expected), encoder.encode(signed.signature))
  ) {
    throw new S3Failure(
      403,
      "SignatureDoesNotMatch",
      "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    );
  }
}

// --- request details ---------------------------------------------------------------------------------------------

function contentLength(request: Request, limit: number): number {
  const header = request.headers.get("content-length");
  if (header === null)
    throw new S3Failure(411, "MissingContentLength", "You must provide the Content-Length HTTP header.");
  if (!/^\d+$/.test(header))
    throw new S3Failure(400, "InvalidArgument", `Content-Length ${header} is not a number of bytes`);
  const length = Number(header);
  if (length > limit)
    throw new S3Failure(
      400,
      "EntityTooLarge",
      `Your proposed upload of ${length} bytes exceeds the maximum allowed size (${limit} bytes).`,
    );
  return length;
}

/** The body's hashes the client vouches for: the signed x-amz-content-sha256 (unless UNSIGNED-PAYLOAD) and Content-MD5. */
interface ClaimedHashes {
  /** Lowercase hex. */
  sha256?: string;
  md5?: Uint8Array;
}

function claimedHashes(request: Request): ClaimedHashes {
  const claimed: ClaimedHashes = {};
  const sha256 = request.headers.get("x-amz-content-sha256") ?? "UNSIGNED-PAYLOAD";
  if (sha256.startsWith("STREAMING-")) throw notImplemented(`x-amz-content-sha256: ${sha256} (aws-chunked bodies)`);
  if (sha256 !== "UNSIGNED-PAYLOAD") {
    if (!/^[0-9a-fA-F]{64}$/.test(sha256)) {
      throw new S3Failure(
        400,
        "InvalidArgument",
        `x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256 in hex, not ${sha256}`,
      );
    }
    claimed.sha256 = sha256.toLowerCase();
  }
  const md5 = request.headers.get("content-md5");
  if (md5 !== null) {
    const bytes = base64ToBytes(md5.trim());
    if (bytes === null || bytes.byteLength !== 16)
      throw new S3Failure(400, "InvalidDigest", "The Content-MD5 you specified is not valid.");
    claimed.md5 = bytes;
  }
  return claimed;
}

const sha256Mismatch = () =>
  new S3Failure(
    400,
    "XAmzContentSHA256Mismatch",
    "The provided 'x-amz-content-sha256' header does not match what was computed.",
  );
const md5Mismatch = () =>
  new S3Failure(400, "BadDigest", "The Content-MD5 you specified did not match what we received.");
const incompleteBody = () =>
  new S3Failure(
    400,
    "IncompleteBody",
    "You did not provide the number of bytes specified by the Content-Length HTTP header.",
  );

/** The HTTP metadata R2 keeps with an object, from a PutObject's or CreateMultipartUpload's headers. */
function objectMetadata(headers: Headers): { httpMetadata: R2HTTPMetadata; customMetadata: Record<string, string> } {
  const httpMetadata: R2HTTPMetadata = {};
  const contentType = headers.get("content-type");
  if (contentType !== null) httpMetadata.contentType = contentType;
  const cacheControl = headers.get("cache-control");
  if (cacheControl !== null) httpMetadata.cacheControl = cacheControl;
  const contentDisposition = headers.get("content-disposition");
  if (contentDisposition !== null) httpMetadata.contentDisposition = contentDisposition;
  const contentEncoding = headers.get("content-encoding");
  if (contentEncoding !== null) httpMetadata.contentEncoding = contentEncoding;
  const contentLanguage = headers.get("content-language");
  if (contentLanguage !== null) httpMetadata.contentLanguage = contentLanguage;
  const customMetadata: Record<string, string> = {};
  for (const [name, value] of headers) {
    if (name.startsWith("x-amz-meta-")) customMetadata[name.slice("x-amz-meta-".length)] = value;
  }
  return { httpMetadata, customMetadata };
}

function objectHeaders(object: R2Object): Headers {
  const headers = new Headers();
  object.writeHttpMetadata(headers);
  headers.set("etag", object.httpEtag);
  headers.set("last-modified", object.uploaded.toUTCString());
  headers.set("accept-ranges", "bytes");
  for (const [name, value] of Object.entries(object.customMetadata ?? {})) headers.set(`x-amz-meta-${name}`, value);
  return headers;
}

/** One range of a Range header, as R2 takes it; null (the whole object) for anything else, as S3 ignores it. */
function parseRange(header: string | null): R2Range | null {
  if (header === null) return null;
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header);
  if (!match) return null;
  const [, start, end] = match;
  if (start === "" && end === "") return null;
  if (start === "") return { suffix: Number(end) };
  if (end === "") return { offset: Number(start) };
  if (Number(end) < Number(start)) return null;
  return { offset: Number(start), length: Number(end) - Number(start) + 1 };
}

// --- R2 errors ---------------------------------------------------------------------------------------------------

/** R2's error number: the binding's `code`, or the "(10037)" its messages end with. */
function r2Code(error: unknown): number | null {
  const code = (error as Partial<R2Error> | null)?.code;
  if (typeof code === "number") return code;
  const match = /\((\d{5,6})\)\s*$/.exec(String((error as Error | null)?.message ?? ""));
  return match ? Number(match[1]) : null;
}

/**
 * The S3 error for an R2 binding error, or null when it isn't one. `operation` adjusts for Miniflare: its R2
 * answers an unknown upload id with InternalError (10001) on complete and abort, where R2 says NoSuchUpload.
 */
function fromR2Error(
  error: unknown,
  operation: "put" | "get" | "part" | "complete" | "abort" | "other",
): S3Failure | null {
  const code = r2Code(error);
  const message = String((error as Error | null)?.message ?? error);
  switch (code) {
    case null:
      return null;
    case 10037:
      return /SHA-256/i.test(message) ? sha256Mismatch() : md5Mismatch();
    case 10007:
      return new S3Failure(404, "NoSuchKey", "The specified key does not exist.");
    case 10024:
      return new S3Failure(404, "NoSuchUpload", "The specified multipart upload does not exist.");
    case 10025:
      return new S3Failure(
        400,
        "InvalidPart",
        "One or more of the specified parts could not be found or its ETag did not match.",
      );
    case 10048:
      return new S3Failure(
        400,
        "InvalidPart",
        "All parts but the last must be of the same size, and the last no larger.",
      );
    case 10011:
      return new S3Failure(
        400,
        "EntityTooSmall",
        "Your proposed upload is smaller than the minimum allowed object size.",
      );
    case 100100:
      return new S3Failure(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.");
    case 10012:
      return new S3Failure(400, "MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size.");
    case 10020:
      return new S3Failure(400, "KeyTooLongError", "Your key is too long.");
    case 10039:
      return new S3Failure(416, "InvalidRange", "The requested range is not satisfiable");
    case 10001:
      if (operation === "complete" || operation === "abort") {
        return new S3Failure(404, "NoSuchUpload", "The specified multipart upload does not exist.");
      }
      return new S3Failure(
        500,
        "InternalError",
        `We encountered an internal error. Please try again. (R2: ${message})`,
      );
    default:
      return new S3Failure(500, "InternalError", `R2 failed: ${message}`);
  }
}

// --- body checks -------------------------------------------------------------------------------------------------

/**
 * Passes a body on while counting it and (when claimed) hashing it. The last chunk is held back until the end:
 * only when the length and the hashes match is it let through, so whatever reads the other side (R2) never
 * sees the whole body of a request that fails its checks, and never stores it.
 */
class CheckedBody extends TransformStream<Uint8Array, Uint8Array> {
  private readonly state: { bytes: number; failure: S3Failure | null };

  constructor(length: number, claimed: ClaimedHashes) {
    const state: { bytes: number; failure: S3Failure | null } = { bytes: 0, failure: null };
    const sha256 = claimed.sha256 === undefined ? null : new crypto.DigestStream("SHA-256");
    const md5 = claimed.md5 === undefined ? null : new crypto.DigestStream("MD5");
    const writers = [sha256, md5].filter((s) => s !== null).map((s) => s.getWriter());
    let held: Uint8Array | null = null;
    const fail = (failure: S3Failure): never => {
      state.failure = failure;
      throw failure;
    };
    super({
      async transform(chunk, controller) {
        state.bytes += chunk.byteLength;
        if (state.bytes > length)
          fail(new S3Failure(400, "IncompleteBody", "The body is longer than its Content-Length."));
        for (const writer of writers) await writer.write(chunk);
        if (held !== null) controller.enqueue(held);
        held = chunk;
      },
      async flush(controller) {
        if (state.bytes !== length) fail(incompleteBody());
        for (const writer of writers) await writer.close();
        if (sha256 !== null && bytesToHex(await sha256.digest) !== claimed.sha256) fail(sha256Mismatch());
        if (md5 !== null && !equalBytes(new Uint8Array(await md5.digest), claimed.md5!)) fail(md5Mismatch());
        if (held !== null) controller.enqueue(held);
      },
    });
    this.state = state;
  }

  /** Bytes received so far. */
  get bytes(): number {
    return this.state.bytes;
  }

  /** Why the body was refused, once it was. */
  get failure(): S3Failure | null {
    return this.state.failure;
  }
}

/**
 * The body as a stream of exactly `length` bytes (what R2 needs to know its length), checked on the way when there
 * is something R2 does not check itself (null: nothing to check, the body goes to R2 untouched). workerd hands a
 * body over in 4 KiB chunks, and a JavaScript transform costs about 15 ms of CPU per MiB at that size: the local
 * bucket runs on the builder's own cores, so the usual PutObject, whose sha256 R2 checks, skips it.
 */
function checkedStream(
  request: Request,
  length: number,
  claimed: ClaimedHashes,
): { stream: ReadableStream; check: CheckedBody | null } {
  const source = request.body ?? new Response(new Uint8Array(0)).body!;
  // FixedLengthStream fails a body that ends short, so R2 stores nothing of it either way.
  if (claimed.sha256 === undefined && claimed.md5 === undefined)
    return { stream: source.pipeThrough(new FixedLengthStream(length)), check: null };
  const check = new CheckedBody(length, claimed);
  return { stream: source.pipeThrough(check).pipeThrough(new FixedLengthStream(length)), check };
}

/** What went wrong with a body that R2 did not take. */
function bodyFailure(error: unknown, check: CheckedBody | null, length: number, operation: "put" | "part"): S3Failure {
  if (check?.failure) return check.failure;
  const fromR2 = fromR2Error(error, operation);
  if (fromR2) return fromR2;
  // Bytes went in and then stopped: the client went away mid-body. (An error before any byte is ours.)
  if (check && check.bytes > 0 && check.bytes < length) return incompleteBody();
  // Unchecked bodies are not counted: a client gone mid-body ends here too ("Network connection lost"), unanswered.
  return new S3Failure(
    500,
    "InternalError",
    `storing the body failed: ${String((error as Error | null)?.message ?? error)}`,
  );
}

// --- operations --------------------------------------------------------------------------------------------------

async function putObject(request: Request, bucket: R2Bucket, key: string): Promise<Response> {
  const length = contentLength(request, MAX_PUT_BYTES);
  const claimed = claimedHashes(request);
  // R2's put checks one hash (BadDigest, 10037; it refuses to be given two): the signed sha256 when there is
  // one, else the md5. The md5 next to a sha256 is checked on the way, by CheckedBody.
  const forR2 =
    claimed.sha256 !== undefined ? { sha256: claimed.sha256 } : claimed.md5 !== undefined ? { md5: claimed.md5 } : {};
  const { stream, check } = checkedStream(request, length, claimed.sha256 !== undefined ? { md5: claimed.md5 } : {});
  let object: R2Object;
  try {
    object = await bucket.put(key, stream, { ...objectMetadata(request.headers), ...forR2 });
  } catch (error) {
    throw bodyFailure(error, check, length, "put");
  }
  return new Response(null, { status: 200, headers: { etag: object.httpEtag } });
}

async function headObject(bucket: R2Bucket, key: string): Promise<Response> {
  const object = await bucket.head(key);
  if (object === null) throw new S3Failure(404, "NoSuchKey", "The specified key does not exist.");
  const headers = objectHeaders(object);
  headers.set("content-length", String(object.size));
  return new Response(null, { status: 200, headers });
}

async function getObject(request: Request, bucket: R2Bucket, key: string): Promise<Response> {
  const range = parseRange(request.headers.get("range"));
  let object: R2ObjectBody | null;
  try {
    object = await bucket.get(key, range ? { range } : {});
  } catch (error) {
    throw fromR2Error(error, "get") ?? error;
  }
  if (object === null) throw new S3Failure(404, "NoSuchKey", "The specified key does not exist.");
  const headers = objectHeaders(object);
  if (range === null) {
    headers.set("content-length", String(object.size));
    return new Response(object.body, { status: 200, headers });
  }
  const served = (object.range ?? {}) as { offset?: number; length?: number };
  const offset = served.offset ?? 0;
  const length = served.length ?? object.size - offset;
  headers.set("content-range", `bytes ${offset}-${offset + length - 1}/${object.size}`);
  headers.set("content-length", String(length));
  return new Response(object.body, { status: 206, headers });
}

async function deleteObject(bucket: R2Bucket, key: string): Promise<Response> {
  await bucket.delete(key);
  return new Response(null, { status: 204 });
}

/** S3's largest page of a listing, and most keys in one DeleteObjects. */
const MAX_KEYS = 1000;

/** ListObjectsV2: R2's list, one page, with the continuation token R2's cursor. */
async function listObjects(url: URL, bucket: R2Bucket, bucketName: string): Promise<Response> {
  const params = url.searchParams;
  if (params.has("delimiter")) throw notImplemented("A listing with a delimiter");
  const prefix = params.get("prefix") ?? "";
  const maxKeysText = params.get("max-keys") ?? String(MAX_KEYS);
  if (!/^\d+$/.test(maxKeysText))
    throw new S3Failure(400, "InvalidArgument", "Provided max-keys not an integer or within integer range");
  const maxKeys = Math.min(MAX_KEYS, Number(maxKeysText));
  const token = params.get("continuation-token") ?? undefined;
  const page = await bucket.list({ prefix, cursor: token, limit: Math.max(1, maxKeys) });
  const objects = maxKeys === 0 ? [] : page.objects;
  const truncated = maxKeys > 0 && page.truncated;
  const contents = objects
    .map(
      (object) =>
        `<Contents><Key>${escapeXml(object.key)}</Key><LastModified>${object.uploaded.toISOString()}</LastModified>` +
        `<ETag>${escapeXml(object.httpEtag)}</ETag><Size>${object.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`,
    )
    .join("");
  return xmlResponse(
    200,
    `<ListBucketResult xmlns="${S3_XMLNS}"><Name>${escapeXml(bucketName)}</Name><Prefix>${escapeXml(prefix)}</Prefix>` +
      `<KeyCount>${objects.length}</KeyCount><MaxKeys>${maxKeys}</MaxKeys><IsTruncated>${truncated}</IsTruncated>` +
      (token ? `<ContinuationToken>${escapeXml(token)}</ContinuationToken>` : "") +
      (truncated
        ? `<NextContinuationToken>${escapeXml(page.truncated ? page.cursor : "")}</NextContinuationToken>`
        : "") +
      `${contents}</ListBucketResult>`,
  );
}

/** A small XML body (at most ~1 MB), read whole and checked against its length and claimed hashes. */
async function checkedSmallBody(request: Request): Promise<Uint8Array> {
  const length = contentLength(request, MAX_COMPLETE_BODY_BYTES);
  const claimed = claimedHashes(request);
  const body = new Uint8Array(await request.arrayBuffer());
  if (body.byteLength !== length) throw incompleteBody();
  if (claimed.sha256 !== undefined && bytesToHex(await crypto.subtle.digest("SHA-256", body)) !== claimed.sha256)
    throw sha256Mismatch();
  if (claimed.md5 !== undefined && !equalBytes(new Uint8Array(await crypto.subtle.digest("MD5", body)), claimed.md5))
    throw md5Mismatch();
  return body;
}

/** DeleteObjects: the keys of the XML body, deleted at once (a key that is not there counts as deleted, as in S3). */
async function deleteObjects(request: Request, bucket: R2Bucket): Promise<Response> {
  const xml = new TextDecoder().decode(await checkedSmallBody(request));
  if (!/<Delete[\s>]/.test(xml)) {
    throw new S3Failure(
      400,
      "MalformedXML",
      "The XML you provided was not well-formed or did not validate against our published schema.",
    );
  }
  const keys = [...xml.matchAll(/<Object>[\s\S]*?<Key>([\s\S]*?)<\/Key>[\s\S]*?<\/Object>/g)].map(([, key]) =>
    decodeXml(key),
  );
  if (keys.length === 0 || keys.length > MAX_KEYS) {
    throw new S3Failure(
      400,
      "MalformedXML",
      `A DeleteObjects request names 1 to ${MAX_KEYS} keys, not ${keys.length}.`,
    );
  }
  await bucket.delete(keys);
  const quiet = /<Quiet>\s*true\s*<\/Quiet>/i.test(xml);
  const deleted = quiet ? "" : keys.map((key) => `<Deleted><Key>${escapeXml(key)}</Key></Deleted>`).join("");
  return xmlResponse(200, `<DeleteResult xmlns="${S3_XMLNS}">${deleted}</DeleteResult>`);
}

async function createMultipartUpload(
  request: Request,
  bucket: R2Bucket,
  bucketName: string,
  key: string,
): Promise<Response> {
  let upload: R2MultipartUpload;
  try {
    upload = await bucket.createMultipartUpload(key, objectMetadata(request.headers));
  } catch (error) {
    throw fromR2Error(error, "other") ?? error;
  }
  return xmlResponse(
    200,
    `<InitiateMultipartUploadResult xmlns="${S3_XMLNS}"><Bucket>${escapeXml(bucketName)}</Bucket>` +
      `<Key>${escapeXml(key)}</Key><UploadId>${escapeXml(upload.uploadId)}</UploadId></InitiateMultipartUploadResult>`,
  );
}

async function uploadPart(
  request: Request,
  bucket: R2Bucket,
  key: string,
  partNumberText: string,
  uploadId: string,
): Promise<Response> {
  if (!/^\d+$/.test(partNumberText) || Number(partNumberText) < 1 || Number(partNumberText) > MAX_PART_NUMBER) {
    throw new S3Failure(
      400,
      "InvalidArgument",
      `Part number must be an integer between 1 and ${MAX_PART_NUMBER}, inclusive`,
    );
  }
  const partNumber = Number(partNumberText);
  const length = contentLength(request, MAX_PUT_BYTES);
  const claimed = claimedHashes(request);
  const upload = bucket.resumeMultipartUpload(key, uploadId);
  let part: R2UploadedPart;
  if (length === 0) {
    // No stream to check on the way: check the claims against the empty body's hashes here.
    if (claimed.sha256 !== undefined && claimed.sha256 !== EMPTY_SHA256) throw sha256Mismatch();
    if (claimed.md5 !== undefined && !equalBytes(claimed.md5, base64ToBytes(EMPTY_MD5_BASE64)!)) throw md5Mismatch();
    try {
      part = await upload.uploadPart(partNumber, new Uint8Array(0));
    } catch (error) {
      throw fromR2Error(error, "part") ?? error;
    }
  } else {
    const { stream, check } = checkedStream(request, length, claimed);
    try {
      part = await upload.uploadPart(partNumber, stream);
    } catch (error) {
      throw bodyFailure(error, check, length, "part");
    }
  }
  return new Response(null, { status: 200, headers: { etag: `"${part.etag}"` } });
}

/** The parts of a CompleteMultipartUpload body, in the order given. */
function parseCompleteBody(xml: string): R2UploadedPart[] {
  if (!/<CompleteMultipartUpload[\s>]/.test(xml)) {
    throw new S3Failure(
      400,
      "MalformedXML",
      "The XML you provided was not well-formed or did not validate against our published schema.",
    );
  }
  const parts: R2UploadedPart[] = [];
  for (const [, inner] of xml.matchAll(/<Part>([\s\S]*?)<\/Part>/g)) {
    const number = /<PartNumber>\s*(\d+)\s*<\/PartNumber>/.exec(inner)?.[1];
    const etag = /<ETag>([\s\S]*?)<\/ETag>/.exec(inner)?.[1];
    if (number === undefined || etag === undefined) {
      throw new S3Failure(400, "MalformedXML", "Every Part needs a PartNumber and an ETag.");
    }
    parts.push({
      partNumber: Number(number),
      etag: decodeXml(etag)
        .trim()
        .replace(/^"(.*)"$/, "$1"),
    });
  }
  if (parts.length === 0) throw new S3Failure(400, "MalformedXML", "The XML you provided names no parts.");
  for (let i = 1; i < parts.length; i++) {
    if (parts[i].partNumber <= parts[i - 1].partNumber) {
      throw new S3Failure(
        400,
        "InvalidPartOrder",
        "The list of parts was not in ascending order. Parts must be ordered by part number.",
      );
    }
  }
  return parts;
}

async function completeMultipartUpload(
  request: Request,
  url: URL,
  bucket: R2Bucket,
  bucketName: string,
  key: string,
  uploadId: string,
): Promise<Response> {
  const parts = parseCompleteBody(new TextDecoder().decode(await checkedSmallBody(request)));
  let object: R2Object;
  try {
    object = await bucket.resumeMultipartUpload(key, uploadId).complete(parts);
  } catch (error) {
    throw fromR2Error(error, "complete") ?? error;
  }
  return xmlResponse(
    200,
    `<CompleteMultipartUploadResult xmlns="${S3_XMLNS}"><Location>${escapeXml(url.origin + url.pathname)}</Location>` +
      `<Bucket>${escapeXml(bucketName)}</Bucket><Key>${escapeXml(key)}</Key><ETag>${escapeXml(object.httpEtag)}</ETag>` +
      "</CompleteMultipartUploadResult>",
  );
}

async function abortMultipartUpload(bucket: R2Bucket, key: string, uploadId: string): Promise<Response> {
  try {
    await bucket.resumeMultipartUpload(key, uploadId).abort();
  } catch (error) {
    throw fromR2Error(error, "abort") ?? error;
  }
  return new Response(null, { status: 204 });
}

// --- routing -----------------------------------------------------------------------------------------------------

async function handle(request: Request, env: Env): Promise<Response> {
  const url = new URL(request.url);
  const method = request.method;
  if (url.pathname === "/" && (method === "GET" || method === "HEAD")) {
    return new Response(method === "HEAD" ? null : `local S3 endpoint for the R2 bucket ${env.S3_BUCKET}\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  }
  if (!env.S3_ACCESS_KEY_ID || !env.S3_SECRET_ACCESS_KEY || !env.S3_BUCKET) {
    throw new S3Failure(
      500,
      "InternalError",
      "the endpoint is not configured: S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY and S3_BUCKET must be bound",
    );
  }
  await authenticate(request, url, env);

  const slash = url.pathname.indexOf("/", 1);
  let bucketName: string;
  let key: string;
  try {
    bucketName = decodeURIComponent(slash === -1 ? url.pathname.slice(1) : url.pathname.slice(1, slash));
    key = slash === -1 ? "" : decodeURIComponent(url.pathname.slice(slash + 1));
  } catch {
    throw new S3Failure(400, "InvalidURI", "Couldn't parse the specified URI.");
  }
  if (bucketName !== env.S3_BUCKET) throw new S3Failure(404, "NoSuchBucket", "The specified bucket does not exist.");
  // x-id is the operation's name some SDKs add for logs, and X-Amz-* the authentication of a presigned URL: neither
  // changes the operation.
  const params = [...new Set(url.searchParams.keys())]
    .filter((name) => name !== "x-id" && !name.startsWith("X-Amz-"))
    .sort();
  const query = params.join("&");
  const uploadId = url.searchParams.get("uploadId") ?? "";
  if (request.headers.has("x-amz-copy-source")) throw notImplemented("CopyObject / UploadPartCopy (x-amz-copy-source)");
  const conditional = CONDITIONAL_HEADERS.filter((name) => request.headers.has(name));
  if (conditional.length > 0) throw notImplemented(`A conditional request (${conditional.join(", ")})`);
  const bucket = env.REGISTRY_BUCKET;

  if (key === "") {
    if (method === "GET" && url.searchParams.get("list-type") === "2") return listObjects(url, bucket, bucketName);
    if (method === "POST" && query === "delete") return deleteObjects(request, bucket);
    throw notImplemented(`${method} on the bucket ${query ? `with ?${query}` : ""}(bucket settings, ListObjects v1)`);
  }
  if (query === "") {
    if (method === "PUT") return putObject(request, bucket, key);
    if (method === "HEAD") return headObject(bucket, key);
    if (method === "GET") return getObject(request, bucket, key);
    if (method === "DELETE") return deleteObject(bucket, key);
  } else if (query === "uploads" && method === "POST") {
    return createMultipartUpload(request, bucket, bucketName, key);
  } else if (query === "partNumber&uploadId" && method === "PUT" && uploadId !== "") {
    return uploadPart(request, bucket, key, url.searchParams.get("partNumber") ?? "", uploadId);
  } else if (query === "uploadId" && uploadId !== "") {
    if (method === "POST") return completeMultipartUpload(request, url, bucket, bucketName, key, uploadId);
    if (method === "DELETE") return abortMultipartUpload(bucket, key, uploadId);
  }
  throw notImplemented(`${method} ${query ? `with ?${query}` : "on an object"}`);
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const id = requestId();
    let response: Response;
    try {
      response = await handle(request, env);
    } catch (error) {
      const failure =
        error instanceof S3Failure
          ? error
          : new S3Failure(
              500,
              "InternalError",
              `We encountered an internal error: ${String((error as Error | null)?.message ?? error)}`,
            );
      response = errorResponse(request.method, failure);
    }
    // Responses made here have mutable headers; an R2 body's response too.
    response.headers.set("x-amz-request-id", id);
    return response;
  },
} satisfies ExportedHandler<Env>;
