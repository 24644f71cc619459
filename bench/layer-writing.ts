// `npm run bench:layer-writing -- <image-metadata store path>`: the builder's layer writing alone (tar, both hashes,
// compression), without Nix, the bucket or uploads, for a closure already in the store, against `tar | pigz -6` of
// the same paths. Each figure is taken several times (the machine is shared); the best and the median are printed.
// `npm run bench -- builds` prints the same figures once, for the closure it has just built.
//
//   npm run bench:layer-writing -- /nix/store/...-image-metadata [--runs 3]
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import type { BlobStore } from "../builder-service/blob-store.ts";
import { mapWithLimit } from "../builder-service/bounded-map.ts";
import { parseImageClosure, type StorePathNode } from "../builder-service/closure.ts";
import { planLayers, DEFAULT_LAYER_BUDGET } from "../builder-service/layering.ts";
import { writeLayer } from "../builder-service/layer-pipeline.ts";
import type { Popularity } from "../builder-service/popularity.ts";
import { storePathEntries } from "../builder-service/tarball.ts";
import { statCpuMs } from "./proc-cpu.ts";

/** Discards what it is given, keeping its sha256 and size as a blob store's spool does. */
export function discardingStore(): Pick<BlobStore, "stage"> {
  return {
    stage: async () => {
      const hash = createHash("sha256");
      let size = 0;
      const sink = new Writable({
        write(chunk: Buffer, _encoding, callback) {
          hash.update(chunk);
          size += chunk.length;
          callback();
        },
      });
      return {
        sink,
        written: () => ({ digest: `sha256:${hash.digest("hex")}`, size }),
        commit: async () => undefined,
        abort: async () => undefined,
      };
    },
  };
}

export interface LayerWritingTimes {
  /** Wall-clock time. */
  ms: number;
  /** CPU time of the whole process: the main thread, the compression on libuv's pool, the garbage collector. */
  cpuMs: number;
  /**
   * CPU time of the main thread alone (listing, tar, reads, the tar's hash, the discarding store's hash), from
   * Linux's /proc; NaN elsewhere. Its busy time by the event loop would count the time it waits for a core too.
   */
  mainThreadCpuMs: number;
}

/** The main thread's CPU time so far (user and system), in milliseconds; NaN where /proc is not Linux's. */
function mainThreadCpu(): number {
  try {
    return statCpuMs(`/proc/self/task/${process.pid}/stat`);
  } catch {
    return NaN;
  }
}

/**
 * The builder's layer writing alone (listing the entries, tar, both hashes, compression), without Nix, the bucket
 * or uploads: the image's layers, as many at once as the builder writes, each compressed by `threads` threads.
 */
export async function layerWriting(
  graph: StorePathNode[],
  popularity: Popularity | undefined,
  threads: number,
): Promise<LayerWritingTimes> {
  const groups = planLayers(graph, DEFAULT_LAYER_BUDGET, popularity);
  const store = discardingStore();
  const started = performance.now();
  const cpu = process.cpuUsage();
  const mainCpu = mainThreadCpu();
  await mapWithLimit(groups, os.availableParallelism(), async (group) =>
    writeLayer(await storePathEntries(group.paths), store, { parallelism: threads }),
  );
  const { user, system } = process.cpuUsage(cpu);
  return {
    ms: performance.now() - started,
    cpuMs: (user + system) / 1000,
    mainThreadCpuMs: mainThreadCpu() - mainCpu,
  };
}

/** `tar -cf - <the closure's paths> | <compressor> > /dev/null`, in milliseconds. */
export async function timeTarInto(graph: StorePathNode[], compressor: string): Promise<number> {
  const relative = graph.map((node) => node.path.slice(1)).sort();
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn("sh", ["-c", `tar -cf - -C / "$@" | ${compressor} > /dev/null`, "tar", ...relative], {
      stdio: "inherit",
    });
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`tar | ${compressor} exited with ${code}`))));
  });
  return performance.now() - started;
}

async function main(): Promise<void> {
  const { positionals, values } = parseArgs({
    options: { runs: { type: "string", default: "3" } },
    allowPositionals: true,
    strict: true,
  });
  const [metadata] = positionals;
  const runs = Number(values.runs);
  if (positionals.length !== 1 || !Number.isInteger(runs) || runs < 1)
    throw new Error(
      "usage: npm run bench:layer-writing -- <image-metadata store path, with image.json> [--runs N]; " +
        "`ls -dt /nix/store/*-image-metadata` lists the ones built",
    );
  const { graph } = parseImageClosure(await readFile(join(metadata, "image.json"), "utf8"));
  const bytes = graph.reduce((sum, node) => sum + node.narSize, 0);
  const cores = os.availableParallelism();
  console.log(
    `${graph.length} store paths, ${(bytes / 1024 ** 2).toFixed(1)} MiB; ${cores} cores, Node ${process.version}`,
  );
  console.log(
    `uptime at the start: ${os
      .loadavg()
      .map((load) => load.toFixed(2))
      .join(", ")}`,
  );
  const figures: [string, () => Promise<LayerWritingTimes | number>][] = [
    [`tar | pigz -6 -p ${cores}`, () => timeTarInto(graph, `pigz -6 -p ${cores}`)],
    [`layer writing, ${cores} layers at once, 1 thread each`, () => layerWriting(graph, undefined, 1)],
    [`layer writing, ${cores} layers at once, ${cores} threads each`, () => layerWriting(graph, undefined, cores)],
  ];
  const times = new Map<string, LayerWritingTimes[]>(figures.map(([name]) => [name, []]));
  // Interleaved, so that a busy minute on the machine weighs on every figure alike.
  for (let run = 0; run < runs; run++)
    for (const [name, measure] of figures) {
      const measured = await measure();
      times
        .get(name)
        ?.push(typeof measured === "number" ? { ms: measured, cpuMs: NaN, mainThreadCpuMs: NaN } : measured);
    }
  const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const bestAndMedian = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return `best ${seconds(sorted[0])}, median ${seconds(sorted[Math.floor(sorted.length / 2)])}`;
  };
  for (const [name, measured] of times) {
    console.log(
      `  ${name.padEnd(48)} ${bestAndMedian(measured.map((m) => m.ms))} (${measured.map((m) => seconds(m.ms)).join(", ")})`,
    );
    if (measured.some((m) => !Number.isNaN(m.cpuMs)))
      console.log(
        `  ${"".padEnd(48)} CPU ${bestAndMedian(measured.map((m) => m.cpuMs))}; of it the main thread's ` +
          bestAndMedian(measured.map((m) => m.mainThreadCpuMs)),
      );
  }
  console.log(
    `uptime at the end: ${os
      .loadavg()
      .map((load) => load.toFixed(2))
      .join(", ")}`,
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  main().catch((error) => {
    console.error(`layer-writing benchmark failed: ${(error as Error).stack ?? error}`);
    process.exit(1);
  });
}
