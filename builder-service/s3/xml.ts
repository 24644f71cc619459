// The XML the builder's S3 client reads and writes, through fast-xml-parser: S3's error documents, the UploadId of
// a CreateMultipartUpload answer, the part list of a CompleteMultipartUpload request, a ListObjectsV2 page, and the
// DeleteObjects request and answer.
import { XMLBuilder, XMLParser } from "fast-xml-parser";

// Values stay strings (an UploadId or an error code of digits is not a number); entities, named and numeric, are
// decoded; attributes (xmlns) and the declaration are left out.
const parser = new XMLParser({
  ignoreAttributes: true,
  ignoreDeclaration: true,
  parseTagValue: false,
  processEntities: true,
  htmlEntities: true,
});
const builder = new XMLBuilder({});

export interface S3ErrorDocument {
  code: string | null;
  message: string | null;
}

/** The document's elements, or null when the text is not XML. */
function parse(text: string): Record<string, unknown> | null {
  try {
    const document: unknown = parser.parse(text);
    return typeof document === "object" && document !== null ? (document as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The text of the child element `name` of the root element `root`, or null. */
function childText(document: Record<string, unknown> | null, root: string, name: string): string | null {
  const element = document?.[root];
  if (typeof element !== "object" || element === null) return null;
  const value = (element as Record<string, unknown>)[name];
  const first: unknown = Array.isArray(value) ? (value as unknown[])[0] : value;
  return typeof first === "string" ? first : null;
}

/** An S3 error document's code and message; null when the body is not one (an HTML page from a proxy, nothing). */
export function parseErrorDocument(body: string): S3ErrorDocument | null {
  const document = parse(body);
  if (typeof document?.Error !== "object" || document.Error === null) return null;
  return { code: childText(document, "Error", "Code"), message: childText(document, "Error", "Message") };
}

/** The UploadId of a CreateMultipartUpload answer, or null when it names none. */
export function parseUploadId(body: string): string | null {
  return childText(parse(body), "InitiateMultipartUploadResult", "UploadId") || null;
}

/** The CompleteMultipartUpload body: parts 1..n with the ETags their uploads answered, in order. */
export function completeMultipartBody(etags: readonly string[]): string {
  return builder.build({
    CompleteMultipartUpload: { Part: etags.map((etag, index) => ({ PartNumber: index + 1, ETag: etag })) },
  });
}

/** Repeated elements: the parser gives one as an object, several as an array. */
function listOf(value: unknown): Record<string, unknown>[] {
  const list: unknown[] = value === undefined ? [] : Array.isArray(value) ? value : [value];
  return list.filter((entry): entry is Record<string, unknown> => typeof entry === "object" && entry !== null);
}

export interface ListedObject {
  key: string;
  size: number;
  /** LastModified, in ms since the epoch. */
  lastModifiedMs: number;
}

export interface ListPage {
  objects: ListedObject[];
  /** The token of the next page, or null when this is the last one. */
  next: string | null;
}

/** A ListObjectsV2 answer; throws when it is not one (an answer that can't be read must not look like an empty page). */
export function parseListPage(body: string): ListPage {
  const result = parse(body)?.ListBucketResult;
  if (typeof result !== "object" || result === null) throw new Error("the listing's answer is not a ListBucketResult");
  const fields = result as Record<string, unknown>;
  const contents = listOf(fields.Contents);
  const objects = contents.map((entry) => {
    const key = typeof entry.Key === "string" ? entry.Key : null;
    const size = Number(entry.Size);
    const lastModifiedMs = Date.parse(String(entry.LastModified));
    if (key === null || !Number.isSafeInteger(size) || Number.isNaN(lastModifiedMs))
      throw new Error(`the listing has an entry without Key, Size or LastModified: ${JSON.stringify(entry)}`);
    return { key, size, lastModifiedMs };
  });
  const truncated = fields.IsTruncated === "true";
  const next = typeof fields.NextContinuationToken === "string" ? fields.NextContinuationToken : null;
  if (truncated && !next) throw new Error("the listing is truncated but names no NextContinuationToken");
  return { objects, next: truncated ? next : null };
}

/** The DeleteObjects request body for these keys, quiet: the answer lists only the keys that failed. */
export function deleteObjectsBody(keys: readonly string[]): string {
  return builder.build({ Delete: { Quiet: true, Object: keys.map((key) => ({ Key: key })) } });
}

/** The keys a DeleteObjects answer says were not deleted, with why. */
export function parseDeleteErrors(body: string): { key: string; code: string; message: string }[] {
  const document = parse(body);
  // A quiet answer with nothing failed is an empty element, which the parser reads as "".
  if (document === null || !("DeleteResult" in document))
    throw new Error("the answer to DeleteObjects is not a DeleteResult");
  const result = document.DeleteResult;
  return listOf(
    typeof result === "object" && result !== null ? (result as Record<string, unknown>).Error : undefined,
  ).map((error) => ({
    key: String(error.Key),
    code: String(error.Code),
    message: String(error.Message),
  }));
}
