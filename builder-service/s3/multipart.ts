// A multipart upload of a spooled blob: equal parts of S3_PART_SIZE_BYTES (R2 wants every part but the last the
// same size, and >= 5 MiB), each streamed from its slice of the spool file with its own sha256 signed, a few at a
// time. The object becomes visible only at CompleteMultipartUpload, after which a HEAD checks its size; any
// failure aborts the upload, so an interrupted upload leaves nothing under the digest.
import { createReadStream } from "node:fs";
import type { Digest } from "../../common/digest.ts";
import { mapWithLimit } from "../bounded-map.ts";
import type { Logger } from "../log.ts";
import { S3Error } from "./errors.ts";
import { bufferBody, type S3Transport } from "./transport.ts";
import { completeMultipartBody, parseUploadId } from "./xml.ts";

/** S3's and R2's limit on parts per upload. */
const MAX_PARTS = 10_000;

export interface MultipartUpload {
  digest: Digest;
  key: string;
  size: number;
  contentType: string;
  /** The spool file holding the blob's bytes. */
  path: string;
  partSize: number;
  /** Parts sent at once. */
  partConcurrency: number;
  /** Hex sha256 of each part, in order (hashed while spooling). */
  partSha256: readonly string[];
}

/** Part i covers bytes [i * partSize, min((i + 1) * partSize, size)). */
interface PartPlan {
  number: number;
  start: number;
  length: number;
}

/** How many parts a blob of `size` bytes takes; throws past the limit on parts, naming the setting to raise. */
export function partCount(digest: Digest, size: number, partSize: number): number {
  const parts = Math.ceil(size / partSize);
  if (parts > MAX_PARTS) {
    throw new Error(
      `blob ${digest} of ${size} bytes needs ${parts} parts of S3_PART_SIZE_BYTES=${partSize}; ` +
        `the limit is ${MAX_PARTS}: raise S3_PART_SIZE_BYTES`,
    );
  }
  return parts;
}

export async function uploadMultipart(transport: S3Transport, log: Logger, upload: MultipartUpload): Promise<void> {
  const { digest, key, size, path, partSize, partSha256 } = upload;
  const plan: PartPlan[] = [];
  for (let start = 0, number = 1; start < size; start += partSize, number++) {
    plan.push({ number, start, length: Math.min(partSize, size - start) });
  }
  if (plan.length !== partSha256.length)
    throw new Error(`internal: ${plan.length} parts planned, ${partSha256.length} hashed`);

  const created = await transport.send(
    {
      operation: "create multipart upload",
      method: "POST",
      key,
      query: { uploads: "" },
      headers: { "content-type": upload.contentType },
    },
    [200],
  );
  const uploadId = parseUploadId(created.body.toString("utf8"));
  if (!uploadId) throw new Error(`create multipart upload of ${key}: the answer names no UploadId`);
  try {
    const etags = await mapWithLimit(plan, upload.partConcurrency, async (part) => {
      const response = await transport.send(
        {
          operation: `upload part ${part.number}/${plan.length}`,
          method: "PUT",
          key,
          query: { partNumber: String(part.number), uploadId },
          body: {
            length: part.length,
            sha256: partSha256[part.number - 1],
            open: () => createReadStream(path, { start: part.start, end: part.start + part.length - 1 }),
          },
        },
        [200],
      );
      const etag = response.headers.etag;
      if (typeof etag !== "string" || !etag)
        throw new Error(`upload part ${part.number} of ${key}: the answer has no ETag`);
      return etag;
    });
    await complete(transport, key, uploadId, size, etags);
  } catch (error) {
    try {
      await transport.send(
        { operation: "abort multipart upload", method: "DELETE", key, query: { uploadId } },
        [200, 204, 404],
      );
      log.warn("s3-multipart-aborted", { digest, key, uploadId, reason: (error as Error).message });
    } catch (abortError) {
      // The bucket should also have a lifecycle rule that aborts stale uploads (see deploy/README.md).
      log.error("s3-multipart-abort-failed", { digest, key, uploadId, error: (abortError as Error).message });
    }
    throw error;
  }
  const stored = await transport.head("verify upload", key);
  if (stored?.size !== size) {
    await transport
      .send({ operation: "delete wrong upload", method: "DELETE", key }, [200, 204, 404])
      .catch(() => undefined);
    throw new Error(
      `multipart upload of ${key}: the object has ${stored?.size ?? "no"} bytes after completion, expected ${size}`,
    );
  }
}

async function complete(
  transport: S3Transport,
  key: string,
  uploadId: string,
  size: number,
  etags: string[],
): Promise<void> {
  try {
    await transport.send(
      {
        operation: "complete multipart upload",
        method: "POST",
        key,
        query: { uploadId },
        headers: { "content-type": "application/xml" },
        body: bufferBody(Buffer.from(completeMultipartBody(etags))),
      },
      [200],
    );
  } catch (error) {
    // A retried Complete whose first try went through (its answer lost) finds the upload gone.
    if (error instanceof S3Error && error.code === "NoSuchUpload") {
      const stored = await transport.head("verify upload", key);
      if (stored?.size === size) return;
    }
    throw error;
  }
}
