// GET /v2/<name>/referrers/<digest>: this registry stores no artifacts that refer to images, so the answer is
// always an empty index (which tells clients the referrers API is supported, so they need not try the tag schema).
import type { IRequest } from "itty-router";
import { OCI_INDEX } from "../common/media-types.ts";
import type { ImageIndex } from "../common/oci.ts";
import { checkDigest, checkName, decodeParam } from "./params.ts";
import { jsonResponse } from "./responses.ts";

export function handleReferrers(request: IRequest): Response {
  const method = request.method;
  const name = checkName(method, request.params.name);
  if (!name.ok) return name.response;
  const digest = checkDigest(method, decodeParam(request.params.digest));
  if (!digest.ok) return digest.response;
  const index: ImageIndex = { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] };
  const headers: Record<string, string> = { "Content-Type": OCI_INDEX };
  // Filtering an empty list is trivially done; say so, as the spec asks when artifactType is honoured.
  if (new URL(request.url).searchParams.has("artifactType")) headers["OCI-Filters-Applied"] = "artifactType";
  return jsonResponse(method, 200, index, headers);
}
