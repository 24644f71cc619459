// Manifest content negotiation on the Accept header.
import { DOCKER_MANIFEST, OCI_MANIFEST, type ManifestFlavour } from "../common/media-types.ts";

/** The media ranges an Accept header lists with a non-zero quality, lower-cased, parameters dropped. */
function acceptedTypes(accept: string | null): string[] {
  if (!accept) return [];
  const types: string[] = [];
  // Several Accept headers arrive joined by ", "; each may list several types with parameters.
  for (const entry of accept.split(",")) {
    const [type, ...params] = entry.split(";").map((part) => part.trim());
    if (!type) continue;
    const q = params.find((p) => /^q\s*=/i.test(p));
    if (q !== undefined && Number(q.replace(/^q\s*=\s*/i, "")) === 0) continue; // q=0: explicitly not acceptable
    types.push(type.toLowerCase());
  }
  return types;
}

/**
 * OCI when the client lists the OCI manifest type, a wildcard, or nothing at all; Docker schema 2 when it lists
 * that and not OCI. A client that lists neither (only index/list types, say) gets OCI, the registry's native form.
 */
export function negotiateFlavour(accept: string | null): ManifestFlavour {
  const types = acceptedTypes(accept);
  if (types.length === 0) return "oci";
  if (types.includes(OCI_MANIFEST) || types.includes("*/*") || types.includes("application/*")) return "oci";
  if (types.includes(DOCKER_MANIFEST)) return "docker";
  return "oci";
}
