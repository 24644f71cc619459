// Turns a build request into a stored image: Nix builds the closure, store paths are grouped into layers, each
// layer is written once (a layer already in the bucket, written by any builder, is reused), then the config and
// both manifest flavours. The image record that makes it visible is the job's to write (jobs.ts), last.
import os from "node:os";
import type { BuildRequest } from "../common/builder-api.ts";
import {
  blobKey,
  builderCacheKey,
  isLayerRecord,
  manifestKey,
  LOG_LINE_CHARS,
  LOG_TAIL_LINES,
  type JobPhase,
  type JobProgress,
  type LayerRecord,
} from "../common/bucket-layout.ts";
import { sha256Hex, type Digest } from "../common/digest.ts";
import type { LayerCompression } from "../common/image-name.ts";
import type { BuildAdmission } from "./admission.ts";
import { getJson, putJson, type BlobStore, type StagedBlob } from "./blob-store.ts";
import { lookupsInOrder, mapWithLimit } from "./bounded-map.ts";
import { storePathName } from "./closure.ts";
import { planLayers } from "./layering.ts";
import type { Popularity } from "./popularity.ts";
import { writeLayer } from "./layer-pipeline.ts";
import type { Logger } from "./log.ts";
import { serialiseImage, type LayerDescription } from "./manifest.ts";
import type { ImageDerivation, NixRunner } from "./nix-runner.ts";
import type { StoreHold } from "./nix-store-limit.ts";
import { NixBuildProgress } from "./nix-progress.ts";
import { EarlyLayers, onlyDownloads } from "./early-layers.ts";
import { rootFilesystem } from "./root-filesystem.ts";
import type { PackageSource } from "./sources/package-source.ts";
import { LAYER_FORMAT_VERSION, rootfsEntries, storePathEntries, type TarEntry } from "./tarball.ts";

export interface ImageBuilderOptions {
  store: BlobStore;
  source: PackageSource;
  nix: NixRunner;
  log: Logger;
  /** The limits a build must keep (admission.ts): the attribute policy, NIX_MAX_JOBS=0, the closure size. */
  admission: BuildAdmission;
  layerBudget: number;
  /** Which store paths are widely used, for layering past the budget (see layering.ts). */
  popularity?: Popularity;
  /** Layers written at once; defaults to the machine's cores. */
  parallelism?: number;
  /** The Nix store's size limit, which must not collect while a build's paths are not yet rooted. */
  storeHold?: StoreHold;
  /** Blocks of one layer compressed at once (BUILDER_COMPRESSION_THREADS); defaults to the machine's cores. */
  compressionThreads?: number;
  /** Layers of fetched store paths written while Nix downloads the rest (early-layers.ts); on unless false. */
  earlyLayers?: boolean;
}

/** Layer records looked up in the bucket at once. */
const LOOKUP_CONCURRENCY = 16;

/**
 * Where the record of the layer holding these contents, so compressed, lives (store paths are immutable: same paths,
 * same layer).
 */
async function layerRecordKey(compression: LayerCompression, id: string): Promise<string> {
  return builderCacheKey("layers", `${await sha256Hex(`${LAYER_FORMAT_VERSION}\n${compression}\n${id}`)}.json`);
}

/** What a layer not yet in the bucket is made of, and how it is compressed. */
interface NewLayer {
  entries: () => Promise<TarEntry[]>;
  compression: LayerCompression;
}

/** A layer being written: spooled when it resolves; its upload, then its record, go on in `uploaded`. */
type LayerWrite = Promise<{ record: LayerRecord; uploaded: Promise<void> }>;

/** Where a build reports how far it is. */
export interface BuildReporter {
  phase(phase: JobPhase): void;
  progress(update: JobProgress): void;
}

export interface BuiltImage {
  oci: Digest;
  docker: Digest;
}

/** A built image not yet published: its objects are in the bucket and its closure is still rooted. */
export interface UnpublishedImage extends BuiltImage {
  /**
   * Checks that every object the image names is in the bucket and uploads again what is not (a garbage collection
   * may have taken a reused layer meanwhile: gc/sweep-protocol.ts); returns the keys it uploaded.
   */
  ensureStored: () => Promise<string[]>;
  /** Lets the store paths go (the Nix store's collection may take them); after publishing, or giving up. */
  release: () => Promise<void>;
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
  readonly counters: BuilderCounters = {
    builds: 0,
    layersWritten: 0,
    layersReused: 0,
    tarBytesWritten: 0,
    bytesStored: 0,
  };
  private readonly parallelism: number;
  private readonly compressionThreads: number;
  /** Layers being written now, by record key: two jobs that need the same new layer at once write it once. */
  private readonly layersInProgress = new Map<string, LayerWrite>();

  constructor(private readonly options: ImageBuilderOptions) {
    this.parallelism = options.parallelism ?? Math.max(1, os.availableParallelism());
    this.compressionThreads = options.compressionThreads ?? Math.max(1, os.availableParallelism());
  }

  /**
   * Builds the image and stores its blobs and manifests; the caller publishes it (checks it with ensureStored and
   * writes the image record), then releases it.
   */
  async build(request: BuildRequest, key: string, report: BuildReporter): Promise<UnpublishedImage> {
    const { source, nix, admission } = this.options;
    const started = performance.now();
    report.phase("evaluating");
    // Until the derivation has its GC root, the package set's store path has none: the store's collection waits.
    const hold = this.options.storeHold?.hold.bind(this.options.storeHold) ?? ((work) => work());
    const derivation = await hold(async () => {
      const nixSource = await source.nixSource(request.revision);
      await nix.ensureNewEnough(nixSource, request.revision);
      const resolved = await nix.checkPackages(request.packages, nixSource, request.system);
      admission.checkResolved(resolved);
      // Evaluated once; Nix's plan for it (a dry run) is admitted before anything is fetched or built.
      return nix.instantiateImage(request.packages, nixSource, request.system);
    });
    try {
      return {
        ...(await this.buildDerivation(request, key, report, derivation, started)),
        release: derivation.release,
      };
    } catch (error) {
      await derivation.release();
      throw error;
    }
  }

  private async buildDerivation(
    request: BuildRequest,
    key: string,
    report: BuildReporter,
    derivation: ImageDerivation,
    started: number,
  ): Promise<Omit<UnpublishedImage, "release">> {
    const { store, source, nix, log, admission } = this.options;
    // Nix's plan (a dry run): admitted when the admission judges plans, and read for early layers, which are written
    // only while Nix downloads and builds nothing but the image's own derivation (early-layers.ts).
    const wantsPlan = admission.judgesPlans || this.options.earlyLayers !== false;
    const plan = wantsPlan ? await nix.planBuild(derivation.drvPath) : null;
    if (plan && admission.judgesPlans) admission.checkPlan(plan, derivation.drvPath);
    const downloadsOnly =
      this.options.earlyLayers !== false && plan !== null && onlyDownloads(plan, derivation.drvPath);
    const checked = performance.now();
    report.phase("building");
    const nixProgress = new NixBuildProgress();
    const logTail: string[] = [];
    const onLogLine = (line: string) => {
      logTail.push(line.slice(0, LOG_LINE_CHARS));
      if (logTail.length > LOG_TAIL_LINES) logTail.shift();
      nixProgress.line(line);
      // Every line: the job writes its record at most once a second whatever is reported.
      report.progress({ ...nixProgress.progress, log: [...logTail] });
    };
    // Layers of single store paths, written while Nix goes on, or found in the bucket meanwhile, by record key: the
    // layer phase takes them from here.
    const earlyWrites = new Map<string, LayerWrite>();
    const earlyFound = new Map<string, LayerRecord>();
    const imageBuilder = downloadsOnly ? await nix.derivationBuilder(derivation.drvPath) : null;
    const early = !downloadsOnly
      ? null
      : new EarlyLayers({
          storeLayers: this.options.layerBudget - 1,
          imageDerivation: derivation.drvPath,
          leaveOut: imageBuilder ? [imageBuilder] : [],
          nix,
          write: async (path) => {
            const recordKey = await layerRecordKey(request.compression, path);
            if (earlyWrites.has(recordKey) || earlyFound.has(recordKey)) return;
            const stored = await this.storedLayer(recordKey);
            if (stored) {
              earlyFound.set(recordKey, stored);
              return;
            }
            const writing = this.startLayerWrite(recordKey, {
              entries: () => storePathEntries([path]),
              compression: request.compression,
            });
            // Handled here so that a layer the image turns out not to have fails nothing; the layer phase awaits
            // the ones it uses, and sees their failures.
            writing.then(({ uploaded }) => uploaded.catch(() => undefined)).catch(() => undefined);
            earlyWrites.set(recordKey, writing);
            await writing;
          },
          onGiveUp: (reason) => log.info("early-layers-stopped", { imageKey: key, reason }),
        });
    // The same limits on the plan the build announces, in case the caches changed since the dry run. With
    // NIX_MAX_JOBS=0 the plan allows one build, the image's metadata, which Nix builds only with a build slot.
    let closure;
    try {
      closure = await nix.buildClosure(
        derivation,
        onLogLine,
        {
          maxJobs: admission.substituteOnly ? 1 : undefined,
          check: (announced) => {
            admission.checkPlan(announced, derivation.drvPath);
            early?.setPlan(announced);
          },
        },
        early ? (finished) => early.finished(finished) : undefined,
      );
    } finally {
      early?.stop();
    }
    nixProgress.finish();
    report.progress(nixProgress.progress);
    admission.checkClosure(closure.graph);
    const built = performance.now();
    const builtCpu = process.cpuUsage();

    report.phase("layering");
    const rootfs = await rootFilesystem(closure);
    if (rootfs.leftOut.length > 0)
      log.warn("rootfs-left-out", { imageKey: key, reason: "a newline in the name", paths: rootfs.leftOut });
    const groups = planLayers(closure.graph, this.options.layerBudget, this.options.popularity);
    const jobs: { entries: () => Promise<TarEntry[]>; id: string; comment: string; bytes: number }[] = groups.map(
      (group) => ({
        id: group.paths.join("\n"),
        entries: () => storePathEntries(group.paths),
        comment: `store paths: ${group.paths.map(storePathName).join(", ")}`.slice(0, 1024),
        bytes: group.size,
      }),
    );
    jobs.push({
      id: `rootfs\n${JSON.stringify(rootfs.entries)}`,
      entries: async () => rootfsEntries(rootfs.entries),
      comment: `root filesystem: links to ${Object.keys(closure.packages).sort().join(", ")}`.slice(0, 1024),
      bytes: 0,
    });
    // Layers are written the largest first (the manifest keeps the plan's order): the last to finish are small
    // ones, so the cores stay busy to the end and the uploads of the big ones overlap the rest.
    const largestFirst = (job: { bytes: number }) => job.bytes;
    const recordKeys = await Promise.all(jobs.map((job) => layerRecordKey(request.compression, job.id)));
    const indexed = jobs.map((job, index) => ({ ...job, recordKey: recordKeys[index] }));
    // Which layers the bucket has already (written by any builder): asked many at once and in the same order, each
    // layer's writing starting as soon as its own answer is in. Most layers of most images are there; those written
    // or found while Nix downloaded are not asked after again.
    const lookups = lookupsInOrder(
      indexed,
      LOOKUP_CONCURRENCY,
      async (job) =>
        earlyFound.get(job.recordKey) ?? (earlyWrites.has(job.recordKey) ? null : this.storedLayer(job.recordKey)),
      largestFirst,
    );
    const layerCount = { done: 0, total: jobs.length };
    const upload = { done: 0, total: 0 };
    const uploads: Promise<unknown>[] = [];
    report.progress({ layers: { ...layerCount }, upload: { ...upload } });
    const earlyUsed = recordKeys.filter((recordKey) => earlyWrites.has(recordKey)).length;
    const layers = await mapWithLimit(
      indexed,
      this.parallelism,
      async (job) => {
        const write = { entries: job.entries, compression: request.compression };
        const known = (await lookups.answer(job)) ?? earlyWrites.get(job.recordKey);
        const layer = await this.layer(job.recordKey, known, write, job.comment, (size, uploaded) => {
          upload.total += size;
          // Caught here and awaited below: an upload that fails fails the build, never the process.
          uploads.push(
            uploaded.then(
              () => {
                upload.done += size;
                report.progress({ upload: { ...upload } });
                return null;
              },
              (error: unknown) => error,
            ),
          );
        });
        layerCount.done++;
        report.progress({ layers: { ...layerCount }, upload: { ...upload } });
        return layer;
      },
      largestFirst,
    ).finally(() => lookups.settled());
    report.phase("uploading");
    const failed = (await Promise.all(uploads)).find((outcome) => outcome !== null);
    if (failed) throw failed instanceof Error ? failed : new Error("a layer upload failed", { cause: failed });
    const layered = performance.now();
    const layersCpu = process.cpuUsage(builtCpu);

    const image = await serialiseImage({
      system: request.system,
      packages: request.packages,
      rootfs: rootfs.entries,
      mainProgram: closure.mainProgram,
      layers,
      compression: request.compression,
      revision: request.revision,
      source: source.description,
    });
    await store.putBytes(image.config.digest, image.config.bytes);
    for (const manifest of Object.values(image.manifests)) {
      await store.putManifest(manifest.digest, manifest.body, manifest.mediaType);
    }
    this.counters.builds++;
    log.info("build", {
      imageKey: key,
      packages: request.packages,
      system: request.system,
      compression: request.compression,
      revision: request.revision,
      storePaths: closure.graph.length,
      layers: layers.length,
      // Layers written while Nix downloaded (early-layers.ts), and ones written so that the image turned out not to use.
      earlyLayers: earlyUsed,
      earlyLayersUnused: earlyWrites.size - earlyUsed,
      manifest: image.manifests.oci.digest,
      checkMs: Math.round(checked - started),
      nixMs: Math.round(built - checked),
      layersMs: Math.round(layered - built),
      // The builder's CPU over layersMs, all its threads (compression included): how busy the layer phase kept it.
      layersCpuMs: Math.round((layersCpu.user + layersCpu.system) / 1000),
      totalMs: Math.round(performance.now() - started),
    });
    const ensureStored = async (): Promise<string[]> => {
      const uploaded: string[] = [];
      await mapWithLimit(indexed, LOOKUP_CONCURRENCY, async (job) => {
        const layer = layers[indexed.indexOf(job)];
        if (await store.stat(layer.digest)) return;
        // Taken since it was found (by a garbage collection): written again from the same store paths, which give
        // the same bytes.
        const rewritten = await this.writeNewLayer(job.recordKey, {
          entries: job.entries,
          compression: request.compression,
        });
        await rewritten.uploaded;
        if (rewritten.record.digest !== layer.digest) {
          throw new Error(
            `layer ${layer.digest} came out as ${rewritten.record.digest} when written again: its tarball is not deterministic`,
          );
        }
        uploaded.push(blobKey(layer.digest));
      });
      if (!(await store.stat(image.config.digest))) {
        await store.putBytes(image.config.digest, image.config.bytes);
        uploaded.push(blobKey(image.config.digest));
      }
      for (const manifest of Object.values(image.manifests)) {
        if (await store.getObject(manifestKey(manifest.digest))) continue;
        await store.putManifest(manifest.digest, manifest.body, manifest.mediaType);
        uploaded.push(manifestKey(manifest.digest));
      }
      return uploaded;
    };
    return { oci: image.manifests.oci.digest, docker: image.manifests.docker.digest, ensureStored };
  }

  /**
   * Writes a layer unless the same contents were written before, by this builder or another on the bucket (store
   * paths are immutable). The layer is tarred and spooled before this returns; its upload goes on in the background
   * (overlapping the next layers' tarring) and is handed to onUpload with its size. The layer's record is written
   * once the blob is in the bucket.
   */
  private async layer(
    recordKey: string,
    known: LayerRecord | LayerWrite | null | undefined,
    write: NewLayer,
    comment: string,
    onUpload: (size: number, uploaded: Promise<void>) => void,
  ): Promise<LayerDescription> {
    if (known && !(known instanceof Promise)) {
      this.counters.layersReused++;
      return { digest: known.digest, diffId: known.diffId, size: known.size, comment };
    }
    // Written early, while Nix downloaded (early-layers.ts); if that failed, written again here, where a failure counts.
    const early = known ? await known.catch(() => null) : null;
    const { record: fresh, uploaded } = early ?? (await this.startLayerWrite(recordKey, write));
    onUpload(fresh.size, uploaded);
    return { ...fresh, comment };
  }

  /** Starts writing a layer, or joins the write of the same layer another job started. */
  private startLayerWrite(recordKey: string, write: NewLayer): LayerWrite {
    let writing = this.layersInProgress.get(recordKey);
    if (writing) {
      this.counters.layersReused++;
      return writing;
    }
    writing = this.writeNewLayer(recordKey, write);
    this.layersInProgress.set(recordKey, writing);
    writing.then(
      ({ uploaded }) => uploaded.finally(() => this.layersInProgress.delete(recordKey)).catch(() => undefined),
      () => this.layersInProgress.delete(recordKey),
    );
    return writing;
  }

  /** The layer's record, if the layer is in the bucket. */
  private async storedLayer(recordKey: string): Promise<LayerRecord | null> {
    const { store } = this.options;
    const known = await getJson(store, recordKey);
    if (!isLayerRecord(known)) return null;
    return (await store.stat(known.digest)) ? known : null;
  }

  /** Tars, compresses and spools a layer; its upload, then its record, go on in the background. */
  private async writeNewLayer(
    recordKey: string,
    { entries, compression }: NewLayer,
  ): Promise<{ record: LayerRecord; uploaded: Promise<void> }> {
    const { store } = this.options;
    let upload: Promise<void> | null = null;
    const options = { compression, parallelism: this.compressionThreads };
    const written = await writeLayer(
      await entries(),
      {
        stage: async (): Promise<StagedBlob> => {
          const staged = await store.stage();
          return {
            sink: staged.sink,
            written: () => staged.written(),
            abort: () => staged.abort(),
            // Returns once the upload has started; the staged blob cleans up after itself however it ends.
            commit: async (digest, size) => {
              upload = staged.commit(digest, size);
            },
          };
        },
      },
      options,
    );
    this.counters.layersWritten++;
    this.counters.tarBytesWritten += written.tarSize;
    this.counters.bytesStored += written.size;
    const record: LayerRecord = { digest: written.digest, diffId: written.diffId, size: written.size };
    const uploaded = (upload ?? Promise.resolve()).then(() => putJson(store, recordKey, record));
    return { record, uploaded };
  }
}
