// The exact media types clients negotiate on. Content-Type headers carry these with no parameters.

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
/** zstd layers have no Docker media type: both manifest flavours of a zstd image name them by this one. */
export const OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";

export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
export const DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip";

export type ManifestMediaType = typeof OCI_MANIFEST | typeof DOCKER_MANIFEST;

/** The two flavours of every image this registry builds: same config and layer bytes, different descriptors. */
export type ManifestFlavour = "oci" | "docker";
