// What a failed S3 request tells a person and the retry loop: an S3Error carrying S3's status and code, a message
// that names the setting to fix (S3_SECRET_ACCESS_KEY, S3_BUCKET, ...), and whether another try may help.
import { parseErrorDocument } from "./xml.ts";

/** An S3 request that failed, with what S3 said and an explanation a person can act on. */
export class S3Error extends Error {
  constructor(
    message: string,
    readonly operation: string,
    readonly key: string,
    readonly status: number | null,
    readonly code: string | null,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = "S3Error";
  }

  /** Whether this is a configuration problem (credentials, permissions, bucket) rather than an outage. */
  get isConfiguration(): boolean {
    return (
      this.status === 401 || this.status === 403 || this.code === "NoSuchBucket" || this.code === "InvalidBucketName"
    );
  }
}

/** A request that had no answer in time: dropped by us, and tried again. */
export class NoAnswerError extends Error {}

/** Our own spool file could not be read while sending it: not the network's fault, and no retry will help. */
export class SpoolReadError extends Error {}

/** Where the requests go, as the messages name it. */
export interface S3Target {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
}

/** What the messages say about the request that failed. */
export interface FailedRequest {
  operation: string;
  method: string;
  key: string;
}

const TRANSIENT_STATUSES = new Set([429, 500, 502, 503, 504]);
const TRANSIENT_CODES = new Set(["RequestTimeout", "InternalError", "SlowDown", "ServiceUnavailable"]);
/** The server received other bytes than were sent: the next try sends them again. */
const CHANGED_ON_THE_WAY = new Set(["XAmzContentSHA256Mismatch", "BadDigest"]);

/** An S3 answer with a status the request did not expect (or an error in a 200), explained. */
export function answerError(target: S3Target, request: FailedRequest, status: number, body: Buffer): S3Error {
  const text = body.toString("utf8");
  const said = parseErrorDocument(text);
  const code = said?.code ?? null;
  const { bucket, endpoint, accessKeyId } = target;
  const what = `${request.operation} of ${request.key} in bucket ${bucket} at ${endpoint}`;
  let hint = "";
  if (code === "SignatureDoesNotMatch") {
    hint =
      `the signature was refused: S3_SECRET_ACCESS_KEY is not the secret of S3_ACCESS_KEY_ID ${accessKeyId} ` +
      "(or S3_REGION is wrong; R2 wants auto)";
  } else if (code === "InvalidAccessKeyId") {
    hint = `S3_ACCESS_KEY_ID ${accessKeyId} is not known to the endpoint`;
  } else if (code === "AccessDenied" || status === 403) {
    hint =
      request.method === "HEAD"
        ? "403 Forbidden: the credentials were refused (check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, " +
          `and that the key may read and write bucket ${bucket})`
        : `access denied: the key ${accessKeyId} may not ${request.method === "GET" ? "read" : "write"} bucket ${bucket} ` +
          "(R2: give the API token Object Read & Write on it)";
  } else if (code === "NoSuchBucket") {
    hint = `bucket ${bucket} does not exist at S3_ENDPOINT (create it, or fix S3_BUCKET)`;
  } else if (code === "XAmzContentSHA256Mismatch" || code === "BadDigest" || code === "InvalidDigest") {
    hint = "the server received other bytes than were sent (checksum mismatch)";
  }
  const detail = [code, said?.message].filter(Boolean).join(": ") || text.trim().slice(0, 200) || "no details";
  const retryable =
    TRANSIENT_STATUSES.has(status) || (code !== null && (TRANSIENT_CODES.has(code) || CHANGED_ON_THE_WAY.has(code)));
  return new S3Error(
    `${what} failed with ${status} (${detail})${hint ? `: ${hint}` : ""}`,
    request.operation,
    request.key,
    status,
    code,
    retryable,
  );
}

/** A request that got no HTTP answer: the network's fault (retried) unless it was our own file or a bug. */
export function networkError(target: Pick<S3Target, "endpoint">, request: FailedRequest, error: unknown): S3Error {
  const message = error instanceof Error ? error.message : String(error);
  const errno = (error as NodeJS.ErrnoException | null)?.code;
  const code = typeof errno === "string" ? errno : null;
  const what = `${request.operation} of ${request.key} at ${target.endpoint}`;
  const make = (text: string, retryable: boolean) =>
    new S3Error(`${what} failed: ${text}`, request.operation, request.key, null, code, retryable);
  if (error instanceof SpoolReadError) return make(message, false);
  if (code === "ENOTFOUND" || code === "EAI_AGAIN")
    return make(`cannot resolve the host of S3_ENDPOINT (${message})`, true);
  if (code === "ECONNREFUSED") return make(`nothing answers at S3_ENDPOINT (${message})`, true);
  // Socket errors (ECONNRESET, EPIPE, ETIMEDOUT, TLS errors, ...) carry a code; our own timeout is a NoAnswerError.
  const transient = error instanceof NoAnswerError || (code !== null && !code.startsWith("ERR_INVALID"));
  return make(`${code !== null ? `${code} ` : ""}${message}`, transient);
}
