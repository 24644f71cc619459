// What the Nix expression (nix/build-image.nix, attribute `image`) tells the builder about an image: its closure and
// the few facts the root filesystem and the image config need. Read from the image's output, $out/image.json.

export interface StorePathNode {
  path: string;
  references: string[];
  narSize: number;
  closureSize: number;
}

export interface ImageClosure {
  /** Requested package name (and always-added cacert / iana-etc) -> store path of its default output. */
  packages: Record<string, string>;
  /** Requested package name -> the attribute path Nix found it at, dot-joined ("bashinteractive" -> "bashInteractive"). */
  resolved: Record<string, string>;
  /** The store paths the image is made of, requested ones first (sorted by name), then the always-added ones. */
  topLevel: string[];
  graph: StorePathNode[];
  /** For an image of one package: the program it runs by default (its meta.mainProgram), else null. */
  mainProgram: string | null;
}

/** The part of a store path after its hash, e.g. "hello-2.12". */
export function storePathName(path: string): string {
  return path.slice("/nix/store/".length + 33);
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);
const isStringArray = (value: unknown): value is string[] =>
  Array.isArray(value) && value.every((item) => typeof item === "string");
const isStringRecord = (value: unknown): value is Record<string, string> =>
  isRecord(value) && Object.values(value).every((item) => typeof item === "string");
const isNode = (value: unknown): value is StorePathNode =>
  isRecord(value) &&
  typeof value.path === "string" &&
  isStringArray(value.references) &&
  typeof value.narSize === "number" &&
  typeof value.closureSize === "number";

/**
 * The closure from the text of image.json: the structured attributes Nix wrote for the image's build, of which the
 * builder reads `graph` (exportReferencesGraph) and `metadata` (format version 3). Throws on any other shape.
 */
export function parseImageClosure(text: string): ImageClosure {
  const attributes: unknown = JSON.parse(text);
  const metadata = isRecord(attributes) ? attributes.metadata : undefined;
  const graph = isRecord(attributes) ? attributes.graph : undefined;
  if (
    !isRecord(metadata) ||
    metadata.version !== 3 ||
    !isStringRecord(metadata.packages) ||
    !isStringRecord(metadata.resolved) ||
    !isStringArray(metadata.topLevel) ||
    !(metadata.mainProgram === null || typeof metadata.mainProgram === "string") ||
    !Array.isArray(graph) ||
    !graph.every(isNode)
  ) {
    throw new Error("the image's image.json is not what nix/build-image.nix writes (metadata version 3 and a graph)");
  }
  return {
    packages: metadata.packages,
    resolved: metadata.resolved,
    topLevel: metadata.topLevel,
    graph,
    mainProgram: metadata.mainProgram,
  };
}
