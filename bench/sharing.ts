// What a layering costs a registry and its clients across a corpus of images: bytes stored once (layers are
// content-addressed, so a layer two images share is stored and pulled once) against the bytes of the images.
import type { LayerGroup } from "../builder-service/layering.ts";

export interface CorpusImage {
  name: string;
  layers: LayerGroup[];
}

export interface SharingFigures {
  images: number;
  /** Sum of every image's bytes, as if nothing were shared. */
  totalBytes: number;
  /** Bytes of the distinct layers: what the registry stores and a client that pulls them all downloads. */
  storedBytes: number;
  /** totalBytes - storedBytes: bytes served from a layer another image already has. */
  sharedBytes: number;
  layers: { min: number; max: number; mean: number };
}

export function sharing(corpus: readonly CorpusImage[]): SharingFigures {
  const distinct = new Map<string, number>();
  let totalBytes = 0;
  for (const image of corpus) {
    for (const layer of image.layers) {
      totalBytes += layer.size;
      distinct.set(layer.paths.join("\n"), layer.size);
    }
  }
  const storedBytes = [...distinct.values()].reduce((a, b) => a + b, 0);
  const counts = corpus.map((image) => image.layers.length);
  return {
    images: corpus.length,
    totalBytes,
    storedBytes,
    sharedBytes: totalBytes - storedBytes,
    layers: {
      min: Math.min(...counts),
      max: Math.max(...counts),
      mean: counts.reduce((a, b) => a + b, 0) / counts.length,
    },
  };
}
