// The image config and the two manifest flavours (OCI and Docker schema 2) of one built image.
// Serialisation is fixed by construction (key order, no timestamps) so the same inputs give the same digests.
import { sha256Digest, type Digest } from "../common/digest.ts";
import { architectureOf, type LayerCompression, type NixSystem } from "../common/image-name.ts";
import {
  DOCKER_CONFIG,
  DOCKER_LAYER_GZIP,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_LAYER_GZIP,
  OCI_LAYER_ZSTD,
  OCI_MANIFEST,
} from "../common/media-types.ts";
import type { ImageConfig, ImageManifest } from "../common/oci.ts";
import type { RootfsEntry } from "./root-filesystem.ts";

export interface BuiltManifest {
  digest: Digest;
  mediaType: string;
  /** The manifest's exact bytes (JSON text); its digest is over these. */
  body: string;
}

export interface BlobRef {
  digest: Digest;
  size: number;
}

export interface LayerDescription {
  digest: Digest;
  diffId: Digest;
  size: number;
  /** What the layer holds, for `docker history`. */
  comment: string;
}

export interface ImageDescription {
  system: NixSystem;
  packages: string[];
  rootfs: readonly RootfsEntry[];
  /** The one requested package's program (meta.mainProgram), run by default when the image has no bash. */
  mainProgram?: string | null;
  layers: LayerDescription[];
  compression: LayerCompression;
  revision: string;
  source: string;
}

const CA_BUNDLE = "/etc/ssl/certs/ca-bundle.crt";

function imageConfig(image: ImageDescription): ImageConfig {
  const paths = new Set(image.rootfs.map((entry) => entry.path));
  const env = ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"];
  if (paths.has(CA_BUNDLE)) env.push(`SSL_CERT_FILE=${CA_BUNDLE}`, `NIX_SSL_CERT_FILE=${CA_BUNDLE}`);
  const config: ImageConfig["config"] = {
    Env: env,
    Labels: labels(image),
  };
  if (paths.has("/bin/bash")) config.Cmd = ["bash"];
  else if (image.mainProgram && paths.has(`/bin/${image.mainProgram}`)) config.Cmd = [`/bin/${image.mainProgram}`];
  return {
    architecture: architectureOf(image.system),
    os: "linux",
    config,
    rootfs: { type: "layers", diff_ids: image.layers.map((layer) => layer.diffId) },
    history: image.layers.map((layer) => ({ created_by: "nix-edge-registry", comment: layer.comment })),
  };
}

function labels(image: ImageDescription): Record<string, string> {
  return {
    "org.opencontainers.image.revision": image.revision,
    "org.opencontainers.image.source": image.source,
    "org.opencontainers.image.title": image.packages.join(" "),
  };
}

export interface SerialisedImage {
  config: BlobRef & { bytes: Uint8Array };
  manifests: { oci: BuiltManifest; docker: BuiltManifest };
}

async function serialise(mediaType: string, value: unknown): Promise<BuiltManifest> {
  const body = JSON.stringify(value);
  return { digest: await sha256Digest(body), mediaType, body };
}

export async function serialiseImage(image: ImageDescription): Promise<SerialisedImage> {
  const configBytes = new TextEncoder().encode(JSON.stringify(imageConfig(image)));
  const configDigest = await sha256Digest(configBytes);
  const zstd = image.compression === "zstd";
  const oci: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: configDigest, size: configBytes.length },
    layers: image.layers.map((layer) => ({
      mediaType: zstd ? OCI_LAYER_ZSTD : OCI_LAYER_GZIP,
      digest: layer.digest,
      size: layer.size,
    })),
    annotations: labels(image),
  };
  const docker: ImageManifest = {
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST,
    config: { mediaType: DOCKER_CONFIG, digest: configDigest, size: configBytes.length },
    layers: image.layers.map((layer) => ({
      mediaType: zstd ? OCI_LAYER_ZSTD : DOCKER_LAYER_GZIP,
      digest: layer.digest,
      size: layer.size,
    })),
  };
  return {
    config: { digest: configDigest, size: configBytes.length, bytes: configBytes },
    manifests: { oci: await serialise(OCI_MANIFEST, oci), docker: await serialise(DOCKER_MANIFEST, docker) },
  };
}
