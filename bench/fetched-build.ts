// `npm run bench -- fetched`: the cold build of curl/git/jq where Nix only downloads, as a builder does from
// cache.nixos.org, with layers written while Nix downloads (builder-service/early-layers.ts) and without
// (BUILDER_EARLY_LAYERS=0), in alternation. The closure comes from a salted copy of the Debian-derived set, built
// once, copied into a local binary cache served at 4 MiB/s for all downloads together
// (test/support/paced-binary-cache.ts), and deleted from the store before each build. Each build has a fresh
// builder and bucket, so every layer is new to it.
import { execFile } from "node:child_process";
import { cp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { build, resolveLatest } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, startBuilder, startLocalBucket } from "../scripts/local-stack.ts";
import {
  copyToBinaryCache,
  deleteFromStore,
  startPacedBinaryCache,
  storeClosure,
  validPaths,
} from "../test/support/paced-binary-cache.ts";

const execFileAsync = promisify(execFile);

const IMAGE = ["curl", "git", "jq"];
const MiB = 1024 * 1024;
const RATE_BYTES_PER_SECOND = 4 * MiB;
/** Builds of each kind; they alternate, the first of each pair swapping. */
const RUNS = 5;
const SECRET = "benchmark-secret-0123456789abcdef";

/** The builder's `build` log line (builder-service/image-builder.ts writes it). */
export interface BuildLogLine {
  manifest: string;
  layers: number;
  earlyLayers: number;
  earlyLayersUnused: number;
  checkMs: number;
  nixMs: number;
  layersMs: number;
  layersCpuMs: number;
  totalMs: number;
}

/** The `build` log lines among a builder's log lines, in order. */
export function buildLogLines(logLines: readonly string[]): BuildLogLine[] {
  return logLines.filter((line) => line.includes('"event":"build"')).map((line) => JSON.parse(line) as BuildLogLine);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

export async function fetchedBuildFigures(scratch: string, basePath: string): Promise<void> {
  const nixEnv = { ...process.env, NIX_CONFIG: OFFLINE_NIX_CONFIG };
  // A salted copy (package-sets/debian-pkgs/default.nix mixes the salt into each package): new store paths, built
  // here once by Nix, then only ever downloaded.
  const pkgsPath = join(scratch, "fetched-pkgs");
  await cp(basePath, pkgsPath, { recursive: true });
  const packagesFile = join(pkgsPath, "packages.json");
  const set = JSON.parse(await readFile(packagesFile, "utf8")) as Record<string, unknown>;
  await writeFile(packagesFile, JSON.stringify({ ...set, salt: `fetched-${Date.now()}` }));
  // The image's packages and iana-etc, which every image has (nix/build-image.nix), all salted. cacert, which every
  // image has too, and busybox, which builds the image's derivation, are the same in every copy of the set (other
  // images use them): built if missing, never deleted, as on a builder that has built anything.
  await execFileAsync("nix-build", ["--no-out-link", pkgsPath, "-A", "cacert", "-A", "busybox"], { env: nixEnv });
  const { stdout } = await execFileAsync(
    "nix-build",
    ["--no-out-link", pkgsPath, ...[...IMAGE, "iana-etc"].flatMap((name) => ["-A", name])],
    { env: nixEnv },
  );
  const closure = await storeClosure(stdout.split("\n").filter(Boolean), nixEnv);
  const cacheDir = join(scratch, "fetched-cache");
  await copyToBinaryCache(cacheDir, closure, nixEnv);
  const cache = await startPacedBinaryCache(cacheDir, RATE_BYTES_PER_SECOND);
  const builderNixConfig = `${OFFLINE_NIX_CONFIG}\nsubstituters = ${cache.url}\nrequire-sigs = false`;

  type Result = BuildLogLine & { downloaded: number; stopped: string[] };
  const coldBuild = async (name: string, early: boolean): Promise<Result> => {
    await deleteFromStore(await validPaths(closure, nixEnv), nixEnv);
    const bucket = await startLocalBucket(join(scratch, `${name}-bucket`));
    const builder = await startBuilder({
      pkgsPath,
      builderPort: 0,
      builderDataDir: join(scratch, `${name}-builder`),
      secret: SECRET,
      s3Env: bucket.s3Env,
      builderEnv: { NIX_CONFIG: builderNixConfig, BUILDER_EARLY_LAYERS: early ? "1" : "0" },
    });
    const servedBefore = cache.bytesServed;
    try {
      await build(builder.url, SECRET, IMAGE, (await resolveLatest(builder.url, SECRET)).revision);
      const [logged] = buildLogLines(builder.logLines);
      if (!logged) throw new Error("the builder logged no build");
      // Why early layers stopped before Nix was done, if they did (builder-service/early-layers.ts).
      const stopped = builder.logLines
        .filter((line) => line.includes('"event":"early-layers-stopped"'))
        .map((line) => (JSON.parse(line) as { reason: string }).reason);
      return { ...logged, downloaded: cache.bytesServed - servedBefore, stopped };
    } finally {
      await builder.stop();
      await bucket.dispose();
      await rm(join(scratch, `${name}-bucket`), { recursive: true, force: true });
      await rm(join(scratch, `${name}-builder`), { recursive: true, force: true });
    }
  };

  try {
    const results: Record<"early" | "late", Result[]> = { early: [], late: [] };
    console.log(
      `Cold build of ${IMAGE.join("/")} where Nix only downloads: ${closure.length} store paths from a local binary ` +
        `cache at ${RATE_BYTES_PER_SECOND / MiB} MiB/s for all downloads together, a fresh builder and bucket each ` +
        `time; early layers on and off (BUILDER_EARLY_LAYERS=0), alternating, ${RUNS} builds each:`,
    );
    for (let run = 0; run < RUNS; run++) {
      const order: ("early" | "late")[] = run % 2 === 0 ? ["early", "late"] : ["late", "early"];
      for (const kind of order) {
        const result = await coldBuild(`fetched-${kind}-${run}`, kind === "early");
        results[kind].push(result);
        console.log(
          `  ${kind === "early" ? "early layers" : "BUILDER_EARLY_LAYERS=0"}`.padEnd(26) +
            `total ${seconds(result.totalMs)}: check ${seconds(result.checkMs)}, nix ${seconds(result.nixMs)}, ` +
            `layers and upload ${seconds(result.layersMs)}; ${result.earlyLayers} of ${result.layers} layers early` +
            `${result.earlyLayersUnused ? ` (${result.earlyLayersUnused} unused)` : ""}, ` +
            `${(result.downloaded / MiB).toFixed(1)} MiB downloaded` +
            result.stopped.map((reason) => `; early layers stopped: ${reason}`).join(""),
        );
      }
    }
    const downloadFloor = (median(results.late.map((result) => result.downloaded)) / RATE_BYTES_PER_SECOND) * 1000;
    console.log(`  the download alone at ${RATE_BYTES_PER_SECOND / MiB} MiB/s`.padEnd(54) + seconds(downloadFloor));
    for (const kind of ["early", "late"] as const) {
      const of = (pick: (result: BuildLogLine) => number) => seconds(median(results[kind].map(pick)));
      console.log(
        `  median, ${kind === "early" ? "early layers" : "BUILDER_EARLY_LAYERS=0"}`.padEnd(54) +
          `${of((result) => result.totalMs).padEnd(10)} check ${of((result) => result.checkMs)}, ` +
          `nix ${of((result) => result.nixMs)}, layers and upload ${of((result) => result.layersMs)}; ` +
          `early layers ${median(results[kind].map((result) => result.earlyLayers))}`,
      );
    }
    const digests = new Set([...results.early, ...results.late].map((result) => result.manifest));
    console.log(
      `  manifest digests`.padEnd(54) +
        (digests.size === 1 ? `the same in all ${RUNS * 2} builds` : `${digests.size} different: NOT deterministic`),
    );
    console.log("");
  } finally {
    await cache.close();
    await deleteFromStore(await validPaths(closure, nixEnv), nixEnv).catch(() => undefined);
  }
}
