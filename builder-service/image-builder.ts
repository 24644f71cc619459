// Turns a build request into a stored image: Nix builds the closure, store paths are grouped into layers,
// each layer is written once (a layer already stored for another image is reused), then the config and
// both manifest flavours. One build per image key at a time; a finished image is remembered.
import os from "node:os";
import type { BuildRequest, BuildResult } from "../common/builder-api.ts";
import { sha256Hex, type Digest } from "../common/digest.ts";
import { imageKey } from "../common/image-key.ts";
import type { BlobStore } from "./blob-store.ts";
import { mapWithLimit } from "./bounded-map.ts";
import { storePathName } from "./closure.ts";
import { planLayers } from "./layering.ts";
import type { Popularity } from "./popularity.ts";
import { writeLayer } from "./layer-pipeline.ts";
import type { Logger } from "./log.ts";
import { serialiseImage, type LayerDescription } from "./manifest.ts";
import type { NixRunner } from "./nix-runner.ts";
import { SingleFlight } from "./single-flight.ts";
import type { PackageSource } from "./sources/package-source.ts";
import { LAYER_FORMAT_VERSION, rootfsEntries, storePathEntries, type TarEntry } from "./tarball.ts";

export interface ImageBuilderOptions {
  store: BlobStore;
  source: PackageSource;
  nix: NixRunner;
  log: Logger;
  layerBudget: number;
  /** Which store paths are widely used, for layering past the budget (see layering.ts). */
  popularity?: Popularity;
  /** Layers written at once; defaults to the machine's cores. */
  parallelism?: number;
}

interface LayerRecord {
  digest: Digest;
  diffId: Digest;
  size: number;
}

export interface BuilderCounters {
  /** Builds that ran Nix and wrote an image (cache hits are not counted). */
  builds: number;
  layersWritten: number;
  layersReused: number;
  /** Uncompressed tar bytes of the layers written (not of the reused ones). */
  tarBytesWritten: number;
  /** Compressed bytes stored for them. */
  bytesStored: number;
}

export class ImageBuilder {
  readonly counters: BuilderCounters = { builds: 0, layersWritten: 0, layersReused: 0, tarBytesWritten: 0, bytesStored: 0 };
  private readonly flights = new SingleFlight<BuildResult>();
  private readonly parallelism: number;

  constructor(private readonly options: ImageBuilderOptions) {
    this.parallelism = options.parallelism ?? Math.max(1, os.availableParallelism());
  }

  async build(request: BuildRequest): Promise<BuildResult> {
    const key = await imageKey(request.revision, request.system, request.packages);
    return this.flights.run(key, async () => {
      const cached = await this.options.store.getRecord(`images/${key}.json`);
      if (cached) return { ...(JSON.parse(new TextDecoder().decode(cached)) as BuildResult), cached: true };
      const result = await this.buildUncached(request, key);
      await this.options.store.putRecord(`images/${key}.json`, new TextEncoder().encode(JSON.stringify(result)));
      return result;
    });
  }

  private async buildUncached(request: BuildRequest, key: string): Promise<BuildResult> {
    const { store, source, nix, log } = this.options;
    const started = performance.now();
    const nixSource = await source.nixSource(request.revision);
    await nix.ensureNewEnough(nixSource, request.revision);
    await nix.checkPackages(request.packages, nixSource, request.system);
    const checked = performance.now();
    const closure = await nix.buildClosure(request.packages, nixSource, request.system);
    const built = performance.now();

    const groups = planLayers(closure.graph, this.options.layerBudget, this.options.popularity);
    const jobs: { entries: () => Promise<TarEntry[]>; id: string; comment: string }[] = groups.map((group) => ({
      id: group.paths.join("\n"),
      entries: () => storePathEntries(group.paths),
      comment: `store paths: ${group.paths.map(storePathName).join(", ")}`.slice(0, 1024),
    }));
    jobs.push({
      id: `rootfs\n${JSON.stringify(closure.rootfs)}`,
      entries: async () => rootfsEntries(closure.rootfs),
      comment: `root filesystem: links to ${Object.keys(closure.packages).sort().join(", ")}`.slice(0, 1024),
    });
    const layers = await mapWithLimit(jobs, this.parallelism, (job) => this.layer(job.id, job.entries, job.comment));
    const layered = performance.now();

    const image = await serialiseImage({
      system: request.system,
      packages: request.packages,
      rootfs: closure.rootfs,
      mainProgram: closure.mainProgram,
      layers,
      revision: request.revision,
      source: source.description,
    });
    await store.putBytes(image.config.digest, image.config.bytes);
    for (const manifest of Object.values(image.manifests)) {
      await store.putBytes(manifest.digest, new TextEncoder().encode(manifest.body));
    }
    this.counters.builds++;
    log.info("build", {
      imageKey: key,
      packages: request.packages,
      system: request.system,
      revision: request.revision,
      storePaths: closure.graph.length,
      layers: layers.length,
      manifest: image.manifests.oci.digest,
      checkMs: Math.round(checked - started),
      nixMs: Math.round(built - checked),
      layersMs: Math.round(layered - built),
      totalMs: Math.round(performance.now() - started),
    });
    return {
      imageKey: key,
      revision: request.revision,
      manifests: image.manifests,
      config: { digest: image.config.digest, size: image.config.size },
      layers: layers.map((layer) => ({ digest: layer.digest, size: layer.size })),
      cached: false,
    };
  }

  /** Writes a layer unless the same contents were written before (store paths are immutable). */
  private async layer(id: string, entries: () => Promise<TarEntry[]>, comment: string): Promise<LayerDescription> {
    const { store } = this.options;
    const recordName = `layers/${await sha256Hex(`${LAYER_FORMAT_VERSION}\n${id}`)}.json`;
    const record = await store.getRecord(recordName);
    if (record) {
      const known = JSON.parse(new TextDecoder().decode(record)) as LayerRecord;
      if (await store.stat(known.digest)) {
        this.counters.layersReused++;
        return { ...known, comment };
      }
    }
    const written = await writeLayer(await entries(), store);
    this.counters.layersWritten++;
    this.counters.tarBytesWritten += written.tarSize;
    this.counters.bytesStored += written.size;
    const fresh: LayerRecord = { digest: written.digest, diffId: written.diffId, size: written.size };
    await store.putRecord(recordName, new TextEncoder().encode(JSON.stringify(fresh)));
    return { ...fresh, comment };
  }
}
