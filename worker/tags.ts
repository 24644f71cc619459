// GET /v2/<name>/tags/list?n=&last=: `latest` plus every tag served for this name, sorted, paginated.
import type { IRequest } from "itty-router";
import type { Env } from "./env.ts";
import { checkName } from "./params.ts";
import { jsonResponse } from "./responses.ts";
import { r2Storage } from "./storage.ts";

/** Every name has `latest`: it always resolves (to the default source). */
const ALWAYS_LISTED = "latest";

export async function handleTagsList(request: IRequest, env: Env): Promise<Response> {
  const method = request.method;
  const name = checkName(method, request.params.name);
  if (!name.ok) return name.response;
  const query = new URL(request.url).searchParams;
  const rawN = query.get("n");
  // An n that is not a non-negative integer is ignored (no limit), as distribution does for absent n.
  const n = rawN !== null && /^\d+$/.test(rawN) ? Number(rawN) : undefined;
  const last = query.get("last");

  const markers = await r2Storage(env.REGISTRY_BUCKET).listTagMarkers(name.name);
  let tags = [...new Set([ALWAYS_LISTED, ...markers])].sort();
  if (last !== null && last !== "") tags = tags.filter((tag) => tag > last);

  const headers: Record<string, string> = {};
  if (n !== undefined) {
    if (n > 0 && tags.length > n) {
      const lastReturned = tags[n - 1];
      headers.Link = `</v2/${name.name}/tags/list?last=${encodeURIComponent(lastReturned)}&n=${n}>; rel="next"`;
    }
    tags = tags.slice(0, n);
  }
  return jsonResponse(method, 200, { name: name.name, tags }, headers);
}
