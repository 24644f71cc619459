// Image names: every path component is a package (a nixpkgs attribute path); a few are meta-packages.
// Parsing lives here so the worker and the builder agree on what an image is.

/** The repository name grammar of the OCI distribution spec. */
const NAME_GRAMMAR = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

/** Long names are refused before they reach Nix; the OCI spec lets registries cap them. */
const MAX_NAME_LENGTH = 255;

/** Most packages in one image, meta-packages expanded: the worker refuses more before asking any builder. */
export const MAX_PACKAGES = 64;

export type NixSystem = "x86_64-linux" | "aarch64-linux";

export const META_PACKAGES: Readonly<Record<string, readonly string[]>> = {
  shell: ["bashInteractive", "coreutils", "moreutils", "nano"],
};

/** The meta-package that switches the target system. */
export const ARM64_META = "arm64";

/** How an image's layers are compressed: gzip, which every client reads, unless the name asks for zstd. */
export type LayerCompression = "gzip" | "zstd";
export const LAYER_COMPRESSIONS: readonly LayerCompression[] = ["gzip", "zstd"];

/**
 * The meta-package that asks for zstd layers (smaller and faster to unpack; docker 23+, containerd 1.5+, podman 3+
 * and skopeo read them, Docker 20.10 does not). Only as the first component of a name with more than one:
 * anywhere else, or alone, it is nixpkgs' zstd program, so that `shell/zstd` keeps meaning the tool.
 */
export const ZSTD_META = "zstd";

export interface ImageRequest {
  /** The packages to put into the image: meta-packages expanded, deduplicated, sorted. */
  packages: string[];
  system: NixSystem;
  compression: LayerCompression;
}

export type NameCheck = { ok: true; image: ImageRequest } | { ok: false; reason: string };

export function parseImageName(name: string): NameCheck {
  if (name.length > MAX_NAME_LENGTH) {
    return {
      ok: false,
      reason: `repository names are at most ${MAX_NAME_LENGTH} characters; this one has ${name.length}`,
    };
  }
  if (!NAME_GRAMMAR.test(name)) {
    return {
      ok: false,
      reason: `"${name}" is not a repository name: use lower-case components of letters, digits, '.', '_' and '-', separated by '/'`,
    };
  }
  let system: NixSystem = "x86_64-linux";
  let compression: LayerCompression = "gzip";
  // By lower-case name: a component is always lower case and Nix matches it to an attribute regardless of case, so
  // "shell/bashinteractive" is the same image as "shell". A meta-package's spelling is the attribute's own and wins.
  const packages = new Map<string, string>();
  const components = name.split("/");
  if (components.length > 1 && components[0] === ZSTD_META) {
    compression = "zstd";
    components.shift();
  }
  for (const component of components) {
    if (component === ARM64_META) {
      system = "aarch64-linux";
    } else if (Object.hasOwn(META_PACKAGES, component)) {
      // Own keys only: `in` would take "constructor" (a valid name) for a meta-package through Object.prototype.
      for (const pkg of META_PACKAGES[component]) packages.set(pkg.toLowerCase(), pkg);
    } else if (!packages.has(component)) {
      packages.set(component, component);
    }
  }
  if (packages.size === 0) {
    return {
      ok: false,
      reason: `"${name}" names no package, only meta-packages that change the system or the compression`,
    };
  }
  if (packages.size > MAX_PACKAGES) {
    return {
      ok: false,
      reason: `an image holds at most ${MAX_PACKAGES} packages; this name asks for ${packages.size}`,
    };
  }
  return { ok: true, image: { packages: [...packages.values()].sort(), system, compression } };
}

/** OCI platform architecture for a Nix system. */
export function architectureOf(system: NixSystem): "amd64" | "arm64" {
  return system === "aarch64-linux" ? "arm64" : "amd64";
}
