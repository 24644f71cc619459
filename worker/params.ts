// Validation of the path parameters every route shares: the repository name and digests.
import { parseDigest, type Digest } from "../common/digest.ts";
import { parseImageName, type ImageRequest } from "../common/image-name.ts";
import { errorResponse } from "./responses.ts";

/** itty-router hands parameters over still percent-encoded. */
export function decodeParam(raw: string | undefined): string {
  if (raw === undefined) return "";
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw; // not valid percent-encoding: left as is, and the grammar checks refuse it
  }
}

export type Checked<T> = ({ ok: true } & T) | { ok: false; response: Response };

export function checkName(method: string, raw: string | undefined): Checked<{ name: string; image: ImageRequest }> {
  const name = decodeParam(raw);
  const parsed = parseImageName(name);
  if (!parsed.ok) {
    return { ok: false, response: errorResponse(method, 404, "NAME_INVALID", parsed.reason, { name }) };
  }
  return { ok: true, name, image: parsed.image };
}

/** input is the decoded path parameter (see decodeParam). */
export function checkDigest(method: string, input: string): Checked<{ digest: Digest; hex: string }> {
  const parsed = parseDigest(input);
  if (!parsed.ok) {
    return { ok: false, response: errorResponse(method, 400, "DIGEST_INVALID", parsed.reason, { digest: input }) };
  }
  return { ok: true, digest: parsed.digest, hex: parsed.hex };
}
