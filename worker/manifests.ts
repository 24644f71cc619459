// GET|HEAD /v2/<name>/manifests/<reference>: by digest from R2; by tag through resolution, the image record,
// and on a miss a build job the pull waits on (HEAD builds too: docker and containerd HEAD first).
import type { IRequest } from "itty-router";
import type { Digest } from "../common/digest.ts";
import { imageKey } from "../common/image-key.ts";
import type { ImageRequest } from "../common/image-name.ts";
import { OCI_MANIFEST } from "../common/media-types.ts";
import { tagProblem } from "../common/tag.ts";
import type { Env } from "./env.ts";
import { awaitImage } from "./image-builds.ts";
import { negotiateFlavour } from "./negotiation.ts";
import { checkDigest, checkName, decodeParam } from "./params.ts";
import { reuseSeconds } from "./resolutions.ts";
import { notePull } from "./pull-markers.ts";
import { resolveTagCached } from "./resolutions.ts";
import {
  describeError,
  emptyResponse,
  errorResponse,
  etagOf,
  failureResponse,
  ifNoneMatchHits,
  IMMUTABLE_CACHE_CONTROL,
  internalErrorResponse,
  streamResponse,
  bytesResponse,
  type HeaderMap,
} from "./responses.ts";
import { registryStorage } from "./registry-storage.ts";
import { unreadableZstdResponse } from "./zstd-readers.ts";
import type { RegistryStorage, StoredResolution } from "./storage.ts";

/** Tag responses are cached briefly at most: the tag may move. */
const TAG_MAX_AGE_SECONDS = 60;

interface ManifestToServe {
  digest: Digest;
  mediaType: string;
  size: number;
  /** null for HEAD, which only needs the size. */
  bytes: Uint8Array | null;
}

function serveManifest(request: Request, manifest: ManifestToServe, cacheControl: string, byTag: boolean): Response {
  const etag = etagOf(manifest.digest);
  const headers: HeaderMap = {
    "Docker-Content-Digest": manifest.digest,
    ETag: etag,
    "Cache-Control": cacheControl,
  };
  if (byTag) headers.Vary = "Accept"; // the flavour depends on it
  if (request.method === "GET" && ifNoneMatchHits(request, etag)) return emptyResponse(304, headers);
  headers["Content-Type"] = manifest.mediaType;
  if (manifest.bytes) return bytesResponse(request.method, 200, manifest.bytes, headers);
  return streamResponse(request.method, 200, null, manifest.size, headers);
}

/** The media type stored with a manifest, else the one its JSON names, else OCI. */
function mediaTypeOf(stored: string | undefined, bytes: Uint8Array | null): string {
  if (stored) return stored;
  if (bytes) {
    try {
      const parsed = JSON.parse(new TextDecoder().decode(bytes)) as { mediaType?: unknown };
      if (typeof parsed.mediaType === "string") return parsed.mediaType;
    } catch {
      // not JSON: fall through
    }
  }
  return OCI_MANIFEST;
}

/** A stored manifest by digest, reading only the metadata for HEAD. */
async function loadManifest(storage: RegistryStorage, method: string, digest: Digest): Promise<ManifestToServe | null> {
  const hex = digest.slice("sha256:".length);
  if (method === "HEAD") {
    const info = await storage.headManifest(hex);
    return info ? { digest, mediaType: mediaTypeOf(info.contentType, null), size: info.size, bytes: null } : null;
  }
  const stored = await storage.getManifest(hex);
  if (!stored) return null;
  return {
    digest,
    mediaType: mediaTypeOf(stored.mediaType, stored.bytes),
    size: stored.bytes.byteLength,
    bytes: stored.bytes,
  };
}

async function manifestByDigest(
  request: Request,
  storage: RegistryStorage,
  name: string,
  reference: string,
): Promise<Response> {
  const digest = checkDigest(request.method, reference);
  if (!digest.ok) return digest.response;
  const manifest = await loadManifest(storage, request.method, digest.digest);
  if (!manifest) {
    return errorResponse(
      request.method,
      404,
      "MANIFEST_UNKNOWN",
      `manifest ${digest.digest} is not known to this registry`,
      {
        name,
        digest: digest.digest,
      },
    );
  }
  return serveManifest(request, manifest, IMMUTABLE_CACHE_CONTROL, false);
}

function tagCacheControl(env: Env, resolution: StoredResolution): string {
  const reuse = reuseSeconds(env, resolution);
  const maxAge = reuse === null ? TAG_MAX_AGE_SECONDS : Math.min(TAG_MAX_AGE_SECONDS, reuse);
  return `public, max-age=${maxAge}`;
}

/** Tag markers this isolate knows are in R2, to skip the check on every hit. */
const knownMarkers = new Set<string>();

async function ensureTagMarker(storage: RegistryStorage, name: string, tag: string, known: boolean): Promise<void> {
  const id = `${name}:${tag}`;
  if (knownMarkers.has(id)) return;
  try {
    if (!known && (await storage.hasTagMarker(name, tag))) {
      knownMarkers.add(id);
      return;
    }
    await storage.putTagMarker(name, tag);
    knownMarkers.add(id);
  } catch (error) {
    // The image is served either way; only tags/list misses this tag until the next pull.
    console.warn(`could not record tag ${tag} for ${name}: ${describeError(error)}`);
  }
}

async function manifestByTag(
  request: Request,
  env: Env,
  ctx: ExecutionContext,
  storage: RegistryStorage,
  name: string,
  image: ImageRequest,
  tag: string,
): Promise<Response> {
  const method = request.method;
  const problem = tagProblem(tag);
  if (problem) {
    return errorResponse(
      method,
      404,
      "MANIFEST_UNKNOWN",
      `${problem}; this registry serves latest, a 40-hex nixpkgs commit, or a channel or branch name`,
      { name, tag },
    );
  }
  const flavour = negotiateFlavour(request.headers.get("Accept"));
  // A second round only when the builder says the package set moved since the tag was resolved (409).
  for (let attempt = 0; ; attempt++) {
    const resolved = await resolveTagCached(env, storage, ctx, tag, { refresh: attempt > 0 });
    if (!resolved.ok) return failureResponse(method, resolved.failure);
    const { resolution } = resolved;
    const key = await imageKey(resolution.revision, image.system, image.packages, image.compression);
    const cacheControl = tagCacheControl(env, resolution);

    const record = await storage.getImage(key);
    if (record) {
      const manifest = await loadManifest(storage, method, record[flavour]);
      if (manifest) {
        ctx.waitUntil(ensureTagMarker(storage, name, tag, false));
        ctx.waitUntil(notePull(storage, key));
        return serveManifest(request, manifest, cacheControl, true);
      }
      console.warn(`image ${key} names ${flavour} manifest ${record[flavour]}, which is missing; building again`);
    }

    // Cloudflare sets CF-Connecting-IP on every request at the edge (and Miniflare locally, to the client's address).
    const client = request.headers.get("CF-Connecting-IP");
    const built = await awaitImage(
      env,
      key,
      {
        packages: image.packages,
        system: image.system,
        compression: image.compression,
        tag,
        revision: resolution.revision,
      },
      client,
    );
    if (!built.ok) {
      // The package set moved since the tag was resolved (409): resolve again, once.
      const moved = "status" in built.failure && built.failure.status === 409;
      if (moved && attempt === 0) continue;
      return failureResponse(method, built.failure);
    }
    const manifest = await loadManifest(storage, method, built.image[flavour]);
    if (!manifest) {
      const missing = `image ${key} was built, but its ${flavour} manifest ${built.image[flavour]} is not in the bucket`;
      return internalErrorResponse(method, missing, { image: built.image }, { name, tag });
    }
    await ensureTagMarker(storage, name, tag, true);
    ctx.waitUntil(notePull(storage, key));
    return serveManifest(request, manifest, cacheControl, true);
  }
}

export async function handleManifest(request: IRequest, env: Env, ctx: ExecutionContext): Promise<Response> {
  const name = checkName(request.method, request.params.name);
  if (!name.ok) return name.response;
  const reference = decodeParam(request.params.reference);
  const unreadable = unreadableZstdResponse(request, name.name, name.image);
  if (unreadable) return unreadable;
  const storage = await registryStorage(request, env, ctx);
  if (reference.includes(":")) return manifestByDigest(request, storage, name.name, reference);
  return manifestByTag(request, env, ctx, storage, name.name, name.image, reference);
}
