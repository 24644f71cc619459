// The parts of the OCI image and distribution specs this registry produces.
import type { Digest } from "./digest.ts";

export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType: string;
  manifests: Descriptor[];
}

export type Architecture = "amd64" | "arm64";

export interface ImageConfig {
  architecture: Architecture;
  os: "linux";
  config: {
    Env: string[];
    Cmd?: string[];
    Labels?: Record<string, string>;
  };
  rootfs: { type: "layers"; diff_ids: Digest[] };
  history?: { created_by: string; comment?: string; empty_layer?: boolean }[];
}
