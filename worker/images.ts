// Images by key: the images/ record in R2, or a build by the builder whose manifests are stored before the record.
import type { BuiltManifest } from "../common/builder-api.ts";
import { sha256Digest, type Digest } from "../common/digest.ts";
import type { ImageRequest } from "../common/image-name.ts";
import { FLAVOUR_MEDIA_TYPE, type ManifestFlavour } from "../common/media-types.ts";
import { buildImage } from "./builder-client.ts";
import type { Env } from "./env.ts";
import { describeError, type Failure } from "./responses.ts";
import type { ImageRecord, RegistryStorage } from "./storage.ts";

export type BuildOutcome =
  | { ok: true; record: ImageRecord; manifests: Record<ManifestFlavour, BuiltManifest> }
  | { ok: false; failure: Failure };

/** Builds in flight in this isolate, by image key: concurrent pulls of one image share one builder call. */
const inFlight = new Map<string, Promise<BuildOutcome>>();

function internal(message: string): BuildOutcome {
  return { ok: false, failure: { kind: "error", status: 500, code: "UNKNOWN", message } };
}

async function checkManifest(flavour: ManifestFlavour, manifest: BuiltManifest): Promise<string | null> {
  if (manifest.mediaType !== FLAVOUR_MEDIA_TYPE[flavour]) {
    return `the ${flavour} manifest has media type "${manifest.mediaType}", expected "${FLAVOUR_MEDIA_TYPE[flavour]}"`;
  }
  const actual = await sha256Digest(manifest.body);
  if (actual !== manifest.digest) {
    return `the ${flavour} manifest's bytes digest to ${actual}, not to ${manifest.digest} as the builder said`;
  }
  return null;
}

const hexOf = (digest: Digest): string => digest.slice("sha256:".length);

async function buildAndStore(
  env: Env,
  storage: RegistryStorage,
  key: string,
  image: ImageRequest,
  tag: string,
  revision: string,
): Promise<BuildOutcome> {
  const what = `building ${image.packages.join(", ")} (${image.system}) at ${revision}`;
  try {
    const outcome = await buildImage(env, { packages: image.packages, system: image.system, tag, revision });
    switch (outcome.kind) {
      case "error":
        return { ok: false, failure: { kind: "relay", status: outcome.status, bodyText: outcome.bodyText } };
      case "unavailable":
        return { ok: false, failure: { kind: "unavailable", reason: outcome.reason } };
      case "broken":
        return internal(`${what} failed: ${outcome.reason}`);
      case "ok":
        break;
    }
    const result = outcome.value;
    const manifests = result.manifests;
    for (const flavour of ["oci", "docker"] as const) {
      const problem = await checkManifest(flavour, manifests[flavour]);
      if (problem) return internal(`${what}: the builder's answer is inconsistent: ${problem}`);
    }
    if (result.imageKey !== key) {
      // Not fatal: the record is stored under the worker's key, which is what later lookups use.
      console.warn(`builder computed image key ${result.imageKey}, the worker ${key} (common/image-key.ts out of sync?)`);
    }
    // Manifests first, then the record that points at them: nothing half-written is ever visible.
    await Promise.all(
      (["oci", "docker"] as const).map((f) =>
        storage.putManifest(hexOf(manifests[f].digest), manifests[f].body, manifests[f].mediaType),
      ),
    );
    const record: ImageRecord = {
      oci: manifests.oci.digest,
      docker: manifests.docker.digest,
      revision: result.revision,
      builtAt: new Date().toISOString(),
    };
    await storage.putImage(key, record);
    return { ok: true, record, manifests: { oci: manifests.oci, docker: manifests.docker } };
  } catch (error) {
    return internal(`${what} failed: ${describeError(error)}`);
  }
}

/** The image's record after a build, sharing a build already running in this isolate for the same key. */
export async function buildOnce(
  env: Env,
  storage: RegistryStorage,
  ctx: ExecutionContext,
  key: string,
  image: ImageRequest,
  tag: string,
  revision: string,
): Promise<BuildOutcome> {
  let pending = inFlight.get(key);
  if (!pending) {
    pending = buildAndStore(env, storage, key, image, tag, revision).finally(() => inFlight.delete(key));
    inFlight.set(key, pending);
  }
  // Every waiter keeps the shared build alive, so a client that disconnects doesn't cancel it for the others.
  ctx.waitUntil(pending);
  return pending;
}
