// The XML the builder's S3 client reads and writes, through fast-xml-parser: S3's error documents, the UploadId of
// a CreateMultipartUpload answer, and the part list of a CompleteMultipartUpload request.
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
