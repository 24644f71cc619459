// What the Nix expression (nix/build-image.nix, attribute `image`) tells the builder about an image.
import type { RootfsEntry } from "./tarball.ts";

export interface StorePathNode {
  path: string;
  references: string[];
  narSize: number;
  closureSize: number;
}

export interface ImageClosure {
  /** Requested package name (and always-added cacert / iana-etc) -> store path of its default output. */
  packages: Record<string, string>;
  /** The store paths the image is made of, requested ones first (sorted by name), then the always-added ones. */
  topLevel: string[];
  graph: StorePathNode[];
  rootfs: RootfsEntry[];
  /** For an image of one package: the program it runs by default (its meta.mainProgram), else null. */
  mainProgram: string | null;
}

/** The part of a store path after its hash, e.g. "hello-2.12". */
export function storePathName(path: string): string {
  return path.slice("/nix/store/".length + 33);
}
