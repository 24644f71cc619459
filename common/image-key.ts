// The cache key of an image: everything that decides its bytes, and nothing that moves (tags resolve first).
import { sha256Hex } from "./digest.ts";
import type { LayerCompression, NixSystem } from "./image-name.ts";

/**
 * Bump when what an image holds or how it is laid out changes (layering, the config, which outputs are installed),
 * so old manifests are not served for new builds. 2: meta.outputsToInstall and meta.mainProgram. 3: layers
 * compressed in 1 MiB blocks (builder-service/block-compression.ts), and the layers' compression in the key.
 */
const IMAGE_FORMAT_VERSION = 3;

export async function imageKey(
  revision: string,
  system: NixSystem,
  packages: readonly string[],
  compression: LayerCompression,
): Promise<string> {
  return sha256Hex(
    JSON.stringify({ v: IMAGE_FORMAT_VERSION, revision, system, packages: [...packages].sort(), compression }),
  );
}
