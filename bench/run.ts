// `npm run bench`: the registry's core numbers on real software (the Debian-derived offline package set),
// each printed beside what it is compared with, measured side by side in one run. See README "Benchmark".
import { execFile, spawn } from "node:child_process";
import { cp, mkdtemp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { parseArgs, promisify } from "node:util";
import { manifestKey, type JobPhase, type JobRecord } from "../common/bucket-layout.ts";
import type { NixSystem } from "../common/image-name.ts";
import { DOCKER_MANIFEST, OCI_MANIFEST } from "../common/media-types.ts";
import type { ImageManifest } from "../common/oci.ts";
import { parseImageClosure, type StorePathNode } from "../builder-service/closure.ts";
import { loadConfig } from "../builder-service/config.ts";
import { planLayers, DEFAULT_LAYER_BUDGET } from "../builder-service/layering.ts";
import { loadPopularity, type Popularity } from "../builder-service/popularity.ts";
import { S3BlobStore } from "../builder-service/s3/store.ts";
import { build, builderStatus, resolveLatest } from "../scripts/builder-calls.ts";
import {
  OFFLINE_NIX_CONFIG,
  PROJECT_ROOT,
  startBuilder,
  startLocalBucket,
  startStack,
  type Stack,
} from "../scripts/local-stack.ts";
import { startCountingBucket } from "./counting-bucket.ts";
import { buildLogLines, fetchedBuildFigures, type BuildLogLine } from "./fetched-build.ts";
import { layerWriting, timeTarInto } from "./layer-writing.ts";
import { cpuOfProcessesNamed } from "./proc-cpu.ts";
import { nixeryLayers } from "./nixery-layering.ts";
import { sharing, type CorpusImage } from "./sharing.ts";
import { get, wirePull } from "./wire-pull.ts";

const execFileAsync = promisify(execFile);
process.env.NIX_CONFIG ??= OFFLINE_NIX_CONFIG;

const COLD_IMAGE = ["curl", "git", "jq"];
const SECOND_IMAGE = ["curl", "git", "jq", "python3"];
/** Images people pull side by side: tools sharing glibc, openssl, perl, python. */
const CORPUS: string[][] = [
  ["curl"],
  ["jq"],
  ["git"],
  ["python3"],
  ["curl", "git", "jq"],
  ["bashInteractive", "coreutils", "git", "moreutils", "nano"],
  ["openssl", "python3"],
  ["perl"],
  ["curl", "wget"],
  ["python3", "sqlite"],
  ["gnumake", "gnupatch", "diffutils"],
  ["openssh", "git"],
];
const PULL_RUNS = 11;

const MiB = 1024 * 1024;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

function line(figure: string, value: string, comparedWith: string, verdict = ""): void {
  console.log(`  ${figure.padEnd(52)} ${value.padEnd(22)} ${comparedWith}${verdict ? `  [${verdict}]` : ""}`);
}

async function time<T>(work: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await work();
  return { ms: performance.now() - started, value };
}

async function sh(command: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  const { stdout } = await execFileAsync(command, args, { maxBuffer: 256 * MiB, cwd: options.cwd });
  return stdout;
}

interface Closure {
  graph: StorePathNode[];
  topLevel: string[];
}

/** The same Nix expression the builder runs, called directly. */
async function imageClosure(
  pkgsPath: string,
  packages: string[],
  system: NixSystem = "x86_64-linux",
): Promise<Closure> {
  const out = (
    await sh("nix-build", [
      "--no-out-link",
      join(PROJECT_ROOT, "nix/build-image.nix"),
      "-A",
      "image",
      "--argstr",
      "packages",
      JSON.stringify(packages),
      "--argstr",
      "source",
      JSON.stringify({ kind: "path", path: pkgsPath }),
      "--argstr",
      "system",
      system,
    ])
  ).trim();
  const image = parseImageClosure(await readFile(join(out, "image.json"), "utf8"));
  return { graph: image.graph, topLevel: image.topLevel };
}

/**
 * A copy of the package set whose every package has new store paths (a salt in packages.json, see
 * package-sets/debian-pkgs/default.nix), so a build from it is cold in Nix too, without deleting anything from the
 * store.
 */
async function saltedCopy(base: string, into: string, value: string): Promise<string> {
  await cp(base, into, { recursive: true });
  await salt(into, value);
  return into;
}

/** Salts the package set in place: its revision changes, and so does every package's store path. */
async function salt(pkgsPath: string, value: string): Promise<void> {
  const file = join(pkgsPath, "packages.json");
  const data = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
  await writeFile(file, JSON.stringify({ ...data, salt: value }));
}

interface AloneBuild {
  record: JobRecord;
  /** CPU of this process over the build: the counting bucket's, and the asking after the job. */
  bucketCpuMs: number;
  bytesReceived: number;
  log: BuildLogLine | undefined;
}

/** Rounds of a later cold build against a floor measured just before it: Nix's time alone varies by a second. */
const ALONE_ROUNDS = 3;

/**
 * Cold builds of COLD_IMAGE by one builder of its own writing into a counting bucket (bench/counting-bucket.ts),
 * which costs these cores next to nothing, as R2 costs the builder in production (the bucket runs in this process).
 * The first is the builder's first build since it started, which pays for the process warming up. Then, ALONE_ROUNDS
 * times: the floor again (its package set salted again), and a cold build from the builder's package set salted
 * again (a new revision, so every package is built afresh) by a process that has built before, as a long-running
 * builder in production has.
 */
async function coldBuildsAlone(
  scratch: string,
  pkgsPath: string,
  floorPath: string,
  secret: string,
): Promise<{ first: AloneBuild; rounds: { floor: FloorTimes; build: AloneBuild }[] }> {
  const bucket = await startCountingBucket();
  try {
    const builder = await startBuilder({
      pkgsPath,
      builderPort: 0,
      builderDataDir: join(scratch, "builder-alone"),
      secret,
      s3Env: bucket.s3Env,
    });
    const coldBuild = async (): Promise<AloneBuild> => {
      const { revision } = await resolveLatest(builder.url, secret);
      const received = bucket.bytesReceived();
      const before = process.cpuUsage();
      const record = await build(builder.url, secret, COLD_IMAGE, revision);
      const used = process.cpuUsage(before);
      return {
        record,
        bucketCpuMs: (used.user + used.system) / 1000,
        bytesReceived: bucket.bytesReceived() - received,
        log: buildLogLines(builder.logLines).find((logged) => logged.manifest === record.image?.oci),
      };
    };
    try {
      const first = await coldBuild();
      const rounds = [];
      for (let round = 1; round <= ALONE_ROUNDS; round++) {
        await salt(floorPath, `floor-${Date.now()}-${round}`);
        const floor = await floorBuild(floorPath, COLD_IMAGE);
        await salt(pkgsPath, `alone-${Date.now()}-${round}`);
        rounds.push({ floor, build: await coldBuild() });
      }
      return { first, rounds };
    } finally {
      await builder.stop();
    }
  } finally {
    await bucket.close();
  }
}

interface FloorTimes {
  nixMs: number;
  tarMs: number;
  pigzMs: number;
}

/**
 * The least any builder must do: build the closure with Nix, then one tar | gzip of it (one core). Also tar | pigz
 * of the same closure (every core), the floor of the layer phase alone.
 */
async function floorBuild(pkgsPath: string, packages: string[]): Promise<FloorTimes> {
  const nix = await time(() => imageClosure(pkgsPath, packages));
  const tarMs = await timeTarInto(nix.value.graph, "gzip -6");
  const pigzMs = await timeTarInto(nix.value.graph, `pigz -6 -p ${os.availableParallelism()}`);
  return { nixMs: nix.ms, tarMs, pigzMs };
}

async function machine(): Promise<string> {
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  return `${os.cpus().length} cores (${cpu}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${(await sh("nix-build", ["--version"])).trim()}`;
}

const PARTS = ["builds", "pull", "edge", "fetched"];

/** `npm run bench -- builds`, `-- pull` or `-- edge` runs one part; no argument runs them all. No options. */
function chosenPart(args: string[]): string | undefined {
  const { positionals } = parseArgs({ args, options: {}, strict: true, allowPositionals: true });
  if (positionals.length > 1)
    throw new Error(`one part at a time, not ${positionals.join(" and ")}: use ${PARTS.join(", ")}`);
  const [only] = positionals;
  if (only !== undefined && !PARTS.includes(only)) throw new Error(`unknown part "${only}": use ${PARTS.join(", ")}`);
  return only;
}

async function main(): Promise<void> {
  const only = chosenPart(process.argv.slice(2));
  const scratch = await mkdtemp(join(os.tmpdir(), "bench-"));
  console.log(`Machine: ${await machine()}\n`);

  const basePath = join(scratch, "debian-pkgs");
  const generated = await time(() =>
    sh("node", [join(PROJECT_ROOT, "package-sets/debian-pkgs/generate.mjs"), basePath, "--quiet"]),
  );
  console.log(`Package set: generated from this machine's Debian packages in ${seconds(generated.ms)}\n`);
  // Salted copies: one for the floor, one for the builder, one for the pulls; each builds every package afresh.
  const run = `${Date.now()}`;
  const floorPath = await saltedCopy(basePath, join(scratch, "floor-pkgs"), `floor-${run}`);
  const pkgsPath = await saltedCopy(basePath, join(scratch, "builder-pkgs"), `builder-${run}`);
  const alonePath = await saltedCopy(basePath, join(scratch, "alone-pkgs"), `alone-${run}`);
  const pullPath = await saltedCopy(basePath, join(scratch, "pull-pkgs"), `pull-${run}`);
  if (only === undefined || only === "builds") await buildFigures(scratch, basePath, floorPath, pkgsPath, alonePath);
  if (only === undefined || only === "pull") await pullFigures(scratch, pullPath);
  if (only === undefined || only === "edge") await edgeFigures(scratch, pullPath);
  if (only === undefined || only === "fetched") await fetchedBuildFigures(scratch, basePath);
  await rm(scratch, { recursive: true, force: true });
}

/** The bucket behind a builder's S3 settings, read as the builder reads it. */
function bucketReader(s3Env: Record<string, string>, spoolDir: string): S3BlobStore {
  const { kind: _kind, ...s3 } = loadConfig({ ...s3Env, BUILDER_SECRET: "benchmark-reader-0123456789" }).store;
  const quiet = () => undefined;
  return new S3BlobStore({ ...s3, spoolDir, log: { info: quiet, warn: quiet, error: quiet } });
}

/** A finished job's image manifest (OCI), read from the bucket the builder wrote it into. */
async function manifestOf(store: S3BlobStore, record: JobRecord): Promise<ImageManifest> {
  if (!record.image) throw new Error(`job ${record.jobId} has no image (phase ${record.phase})`);
  const bytes = await store.getObject(manifestKey(record.image.oci));
  if (!bytes) throw new Error(`manifest ${record.image.oci} is not in the bucket`);
  return JSON.parse(new TextDecoder().decode(bytes)) as ImageManifest;
}

/** How long each phase of a job took, by the builder's clock (a phase lasts until the next one begins). */
function phaseTimes(record: { startedAt: string; phases: { phase: JobPhase; at: string }[] }): {
  total: number;
  phases: Partial<Record<JobPhase, number>>;
} {
  const phases: Partial<Record<JobPhase, number>> = {};
  for (let i = 0; i + 1 < record.phases.length; i++) {
    phases[record.phases[i].phase] = Date.parse(record.phases[i + 1].at) - Date.parse(record.phases[i].at);
  }
  const end = record.phases[record.phases.length - 1];
  return { total: Date.parse(end.at) - Date.parse(record.startedAt), phases };
}

async function buildFigures(
  scratch: string,
  basePath: string,
  floorPath: string,
  pkgsPath: string,
  alonePath: string,
): Promise<void> {
  const popularityFile = join(basePath, "popularity.json");
  const popularity: Popularity | undefined = await loadPopularity(popularityFile).catch(() => undefined);
  const secret = "benchmark-secret-0123456789abcdef";
  // The builder writes into a local bucket (the local stack's S3 endpoint over its R2), as it writes into R2.
  const bucket = await startLocalBucket(join(scratch, "builds-bucket"));
  const store = bucketReader(bucket.s3Env, join(scratch, "reader-spool"));
  const builder = await startBuilder({
    pkgsPath,
    builderPort: 0,
    builderDataDir: join(scratch, "builder"),
    secret,
    s3Env: bucket.s3Env,
  }).catch(async (error: unknown) => {
    await bucket.dispose();
    throw error;
  });
  const counters = () => builderStatus(builder.url, secret);
  try {
    const { revision } = await resolveLatest(builder.url, secret);

    // 1. Cold build against its floor.
    console.log(`Cold build of ${COLD_IMAGE.join("/")} (every package built afresh on both sides):`);
    const floor = await floorBuild(floorPath, COLD_IMAGE);
    const bucketCpuBefore = cpuOfProcessesNamed("workerd");
    const cold = await build(builder.url, secret, COLD_IMAGE, revision);
    const bucketCpuMs = cpuOfProcessesNamed("workerd") - bucketCpuBefore;
    const coldManifest = await manifestOf(store, cold);
    // By the job's own record (submitted to done, by the builder's clock): the client's polling adds nothing.
    const coldMs = phaseTimes(cold).total;
    const closure = await imageClosure(pkgsPath, COLD_IMAGE);
    const closureBytes = closure.graph.reduce((sum, node) => sum + node.narSize, 0);
    const floorMs = floor.nixMs + floor.tarMs;
    line(
      "builder, job submitted to manifests in the local R2",
      seconds(coldMs),
      `floor ${seconds(floorMs)} (nix-build ${seconds(floor.nixMs)} + tar | gzip ${seconds(floor.tarMs)})`,
      `${(coldMs / floorMs).toFixed(2)}x, with the bucket's CPU on the same cores`,
    );
    line("  by phase", "", describeJob(phaseTimes(cold)));
    // R2 in production runs on Cloudflare's machines; the local bucket runs on these two cores, beside the builder.
    line(
      "  CPU the local bucket (workerd) used meanwhile",
      seconds(bucketCpuMs),
      "on the same cores as the builder; R2 costs the builder only the sending",
    );
    // The builder's own CPU from the end of Nix to the last upload (its build log line), against what the cores had.
    const coldLog = buildLogLines(builder.logLines).find((logged) => logged.manifest === cold.image?.oci);
    const cores = os.availableParallelism();
    if (coldLog) {
      line(
        "  CPU the builder used in layering and uploading",
        seconds(coldLog.layersCpuMs),
        `all its threads, in ${seconds(coldLog.layersMs)} on ${cores} cores (${seconds(cores * coldLog.layersMs)} of CPU time)`,
      );
    }
    const alone = await coldBuildsAlone(scratch, alonePath, floorPath, secret);
    const builderCpu = (figures: AloneBuild) =>
      figures.log
        ? `; the builder's CPU in layering and uploading ${seconds(figures.log.layersCpuMs)} in ${seconds(figures.log.layersMs)}`
        : "";
    const firstMs = phaseTimes(alone.first.record).total;
    line(
      "the builder alone, its first build",
      seconds(firstMs),
      `floor ${seconds(floorMs)}`,
      `${(firstMs / floorMs).toFixed(2)}x, the process warming up`,
    );
    line("  by phase", "", describeJob(phaseTimes(alone.first.record)) + builderCpu(alone.first));
    const ratios: number[] = [];
    const layerRatios: number[] = [];
    for (const [index, { floor: roundFloor, build: later }] of alone.rounds.entries()) {
      const times = phaseTimes(later.record);
      const ms = times.total;
      const roundFloorMs = roundFloor.nixMs + roundFloor.tarMs;
      const layering = times.phases.layering ?? 0;
      ratios.push(ms / roundFloorMs);
      layerRatios.push(layering / roundFloor.pigzMs);
      line(
        `the builder alone, a later cold build (${index + 1} of ${alone.rounds.length})`,
        seconds(ms),
        `floor ${seconds(roundFloorMs)} (nix-build ${seconds(roundFloor.nixMs)} + tar | gzip ${seconds(roundFloor.tarMs)})`,
        `${(ms / roundFloorMs).toFixed(2)}x`,
      );
      line(
        "  by phase",
        "",
        `${describeJob(times)}${builderCpu(later)}; layer phase ${(layering / roundFloor.pigzMs).toFixed(2)}x tar | pigz -6 (${seconds(roundFloor.pigzMs)})`,
      );
    }
    line(
      "  CPU the counting bucket used meanwhile",
      [alone.first, ...alone.rounds.map((round) => round.build)].map((b) => seconds(b.bucketCpuMs)).join(", "),
      `this process's, which also asks after the job; it took ${mib(alone.first.bytesReceived)} a build over HTTP`,
    );
    line(
      "the builder alone, later cold builds against their floors",
      `median ${median(ratios).toFixed(2)}x`,
      `${ratios.map((ratio) => ratio.toFixed(2)).join(", ")}`,
      "target <= 0.8x",
    );
    line(
      "  their layer phase against tar | pigz -6",
      `median ${median(layerRatios).toFixed(2)}x`,
      `${layerRatios.map((ratio) => ratio.toFixed(2)).join(", ")}`,
      "target <= 1.2x",
    );
    const layeringMs = phaseTimes(cold).phases.layering ?? 0;
    line(
      "layer phase (tar, hash, compress, spool), local R2",
      seconds(layeringMs),
      `tar | pigz -6 of the closure ${seconds(floor.pigzMs)} on ${os.availableParallelism()} cores`,
      `${(layeringMs / floor.pigzMs).toFixed(2)}x, with the bucket's CPU on the same cores`,
    );
    line("closure", `${closure.graph.length} paths, ${mib(closureBytes)}`, `${coldManifest.layers.length} layers`);
    const throughput = (ms: number) => `${(closureBytes / MiB / (ms / 1000)).toFixed(1)} MiB/s`;
    // The layer phase above also pays for the local bucket: its S3 endpoint (workerd) takes each upload on the
    // same cores. The layer writing alone, with one thread a layer and with one a core:
    const oneThread = (await layerWriting(closure.graph, popularity, 1)).ms;
    const allThreads = (await layerWriting(closure.graph, popularity, cores)).ms;
    line(
      `layer writing alone, ${cores} layers at once, 1 thread each`,
      seconds(oneThread),
      `tar | pigz -6 ${seconds(floor.pigzMs)}`,
      `${(oneThread / floor.pigzMs).toFixed(2)}x`,
    );
    line(
      `the same, ${cores} threads each (BUILDER_COMPRESSION_THREADS)`,
      seconds(allThreads),
      `tar | pigz -6 ${seconds(floor.pigzMs)}`,
      `${(allThreads / floor.pigzMs).toFixed(2)}x, target <= 1.2x`,
    );
    line(
      "compression throughput (store bytes / layer phase)",
      throughput(layeringMs),
      `tar | pigz -6 ${throughput(floor.pigzMs)}, tar | gzip -6 ${throughput(floor.tarMs)}`,
    );

    // 2. A second image that shares most of the first.
    console.log(`\nThen ${SECOND_IMAGE.join("/")}:`);
    const closure2 = await imageClosure(pkgsPath, SECOND_IMAGE);
    const known = new Set(closure.graph.map((node) => node.path));
    const fresh = closure2.graph.filter((node) => !known.has(node.path));
    const freshBytes = fresh.reduce((sum, node) => sum + node.narSize, 0);
    const before = await counters();
    const second = await build(builder.url, secret, SECOND_IMAGE, revision);
    const after = await counters();
    const secondManifest = await manifestOf(store, second);
    const tarred = after.tarBytesWritten - before.tarBytesWritten;
    const written = after.layersWritten - before.layersWritten;
    const rootfsLayerTar = tarred - freshBytes;
    line(
      "bytes newly tarred",
      mib(tarred),
      `new store paths alone: ${mib(freshBytes)} (${fresh.length} paths) + root filesystem`,
      written <= fresh.length + 1
        ? `${written} layers written = new paths + 1, ${secondManifest.layers.length - written} reused`
        : `${written} layers written, more than ${fresh.length} + 1`,
    );
    line("root-filesystem layer and tar headers", mib(Math.max(0, rootfsLayerTar)), "");
    line(
      "bytes newly stored (gzip)",
      mib(after.bytesStored - before.bytesStored),
      `image total ${mib(secondManifest.layers.reduce((sum, l) => sum + l.size, 0))}`,
    );
    line(
      "build time (job submitted to manifests stored)",
      seconds(phaseTimes(second).total),
      describeJob(phaseTimes(second)),
    );

    // 3. Sharing across a corpus, against Nixery's grouping of the same closures.
    console.log(
      `\nSharing across ${CORPUS.length} images (store-path bytes; root-filesystem layers left out of both):`,
    );
    const closures = [];
    for (const packages of CORPUS)
      closures.push({ name: packages.join("/"), closure: await imageClosure(pkgsPath, packages) });
    const popularityFn = popularity ?? (() => undefined);
    const ours: CorpusImage[] = closures.map(({ name, closure }) => ({
      name,
      layers: planLayers(closure.graph, DEFAULT_LAYER_BUDGET, popularity),
    }));
    const nixery: CorpusImage[] = closures.map(({ name, closure }) => ({
      name,
      layers: nixeryLayers(closure.graph, closure.topLevel, popularityFn),
    }));
    // Ours again with no more layers than Nixery gives each image (plus the root filesystem).
    const oursTight: CorpusImage[] = closures.map(({ name, closure }, i) => ({
      name,
      layers: planLayers(closure.graph, nixery[i].layers.length + 1, popularity),
    }));
    const [a, b, c] = [sharing(ours), sharing(nixery), sharing(oursTight)];
    const describe = (f: ReturnType<typeof sharing>) =>
      `shared ${mib(f.sharedBytes)}, stored ${mib(f.storedBytes)} of ${mib(f.totalBytes)}, layers ${f.layers.min}-${f.layers.max} (mean ${f.layers.mean.toFixed(1)})`;
    line("Nixery's grouping (budget 94)", "", describe(b));
    line(
      `ours (budget ${DEFAULT_LAYER_BUDGET - 1} store layers)`,
      "",
      describe(a),
      `${(a.sharedBytes / Math.max(1, b.sharedBytes)).toFixed(2)}x Nixery's shared bytes`,
    );
    line(
      "ours, held to Nixery's layer count per image",
      "",
      describe(c),
      `${(c.sharedBytes / Math.max(1, b.sharedBytes)).toFixed(2)}x Nixery's shared bytes`,
    );
    console.log(`  popularity data: ${popularity ? popularityFile : "none (reference counts within each closure)"}`);
  } finally {
    store.close();
    await builder.stop();
    await bucket.dispose();
  }
}

const SIDES = ["tls", "plain", "distribution"] as const;
type Side = (typeof SIDES)[number];

/** A GET as a container client makes it, its body as text. */
async function fetchText(url: URL, accept?: string): Promise<{ status: number; body: string }> {
  const { status, body } = await get(url, accept, true);
  return { status, body: body?.toString("utf8") ?? "" };
}

interface BuildView {
  packages: string[];
  phase: JobPhase;
  phases: { phase: JobPhase; at: string }[];
  startedAt: string;
}

/**
 * The first pull of an image the registry has never built, through the whole stack: the manifest GET (the worker
 * resolves the tag, its coordinator submits the job and asks after it, the builder builds and writes the bucket, the
 * worker serves the manifest), timed to its 200; then the job's phases as the worker's /api/builds shows them.
 */
async function coldManifest(stack: Stack, name: string): Promise<{ ms: number; job: ReturnType<typeof phaseTimes> }> {
  const manifest = await time(() =>
    fetchText(new URL(`${stack.registryUrl}/v2/${name}/manifests/latest`), `${OCI_MANIFEST}, ${DOCKER_MANIFEST}`),
  );
  if (manifest.value.status !== 200)
    throw new Error(`cold pull of ${name}: the manifest answered ${manifest.value.status}: ${manifest.value.body}`);
  const listed = await fetchText(new URL(`${stack.registryUrl}/api/builds?limit=1`));
  const [job] = (JSON.parse(listed.body) as { builds: BuildView[] }).builds;
  if (!job || job.phase !== "done" || job.packages.join("/") !== name.split("/").sort().join("/")) {
    throw new Error(`cold pull of ${name}: /api/builds shows ${listed.body}`);
  }
  return { ms: manifest.ms, job: phaseTimes(job) };
}

function describeJob(job: ReturnType<typeof phaseTimes>): string {
  const shown: JobPhase[] = ["evaluating", "building", "layering", "uploading"];
  return `builder job ${seconds(job.total)}: ${shown.map((phase) => `${phase} ${seconds(job.phases[phase] ?? 0)}`).join(", ")}`;
}

async function pullFigures(scratch: string, pkgsPath: string): Promise<void> {
  const stackIn = (name: string, tls: boolean) =>
    startStack({
      pkgsPath,
      port: 0,
      builderPort: 0,
      builderDataDir: join(scratch, `${name}-builder`),
      workerStateDir: join(scratch, `${name}-worker`),
      tls,
    });
  // With tls, clients speak https to workerd itself, as they speak it to the edge; the plain-http stack (npm
  // start's default) has the TCP front of scripts/plain-http-front.ts before workerd, which the edge doesn't.
  const edgeLike = await stackIn("tls", true);
  const plain = await stackIn("plain", false);
  const distribution = await startDistribution(scratch);
  try {
    const pull = async (reference: string) => {
      const dir = await mkdtemp(join(scratch, "pull-"));
      const result = await time(() =>
        sh("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${reference}`, `oci:${dir}:img`]),
      );
      await rm(dir, { recursive: true, force: true });
      return result.ms;
    };

    // 4. Cold pulls: the first pull of curl, through the whole stack. The pull half has a package set of its own,
    // so the first stack's builder builds every package with Nix; the second stack's builder (same Nix store) finds
    // them built, and the image is new only to its registry.
    console.log(
      `\nCold pull of curl through the whole stack (worker, coordinator, builder job, manifest served), then skopeo copy of it:`,
    );
    const cold = await coldManifest(edgeLike, "curl");
    line("nothing built yet: manifest GET to 200 (https)", seconds(cold.ms), describeJob(cold.job));
    line("  of which worker, coordinator, asking after job", seconds(cold.ms - cold.job.total), "");
    line("  then skopeo copy of it", seconds(await pull(`${edgeLike.registryHost}/curl:latest`)), "");
    const built = await coldManifest(plain, "curl");
    line("Nix store warm, new image: GET to 200 (plain http)", seconds(built.ms), describeJob(built.job));
    line("  of which worker, coordinator, asking after job", seconds(built.ms - built.job.total), "");
    line("  then skopeo copy of it", seconds(await pull(`${plain.registryHost}/curl:latest`)), "");

    // 5. Warm pulls: the worker (R2) against CNCF distribution serving the same image, runs interleaved.
    console.log(`\nWarm pull of curl with skopeo (${PULL_RUNS} runs each, interleaved, median):`);
    const sides = {
      tls: `${edgeLike.registryHost}/curl:latest`,
      plain: `${plain.registryHost}/curl:latest`,
      distribution: `${distribution.host}/curl:latest`,
    };
    for (const reference of [sides.tls, sides.plain]) await pull(reference);
    await sh("skopeo", [
      "copy",
      "--quiet",
      "--src-tls-verify=false",
      "--dest-tls-verify=false",
      `docker://${sides.plain}`,
      `docker://${sides.distribution}`,
    ]);
    await pull(sides.distribution); // every side warm before anything is timed
    // Every side once per round, so that whatever else the machine does weighs on all three alike.
    const interleaved = async (measure: (side: Side) => Promise<number>): Promise<Record<Side, number[]>> => {
      const runs: Record<Side, number[]> = { tls: [], plain: [], distribution: [] };
      for (let i = 0; i < PULL_RUNS; i++) for (const side of SIDES) runs[side].push(await measure(side));
      return runs;
    };
    const times = await interleaved((side) => pull(sides[side]));
    const dist = median(times.distribution);
    const spread = (values: number[]) => `${seconds(Math.min(...values))}-${seconds(Math.max(...values))}`;
    line("CNCF distribution (plain http)", seconds(dist), `range ${spread(times.distribution)}`);
    const tls = median(times.tls);
    line(
      "worker, https from workerd (as at the edge)",
      seconds(tls),
      `range ${spread(times.tls)}`,
      `${(tls / dist).toFixed(2)}x distribution's time, target <= 1x`,
    );
    const fronted = median(times.plain);
    line(
      "worker behind npm start's plain-http front",
      seconds(fronted),
      `range ${spread(times.plain)}`,
      `${(fronted / dist).toFixed(2)}x distribution's time`,
    );

    // The same pulls with a client that does nothing but receive (bench/wire-pull.ts): the servers alone.
    console.log(
      `\nThe same, served only (manifest and every blob 6 at a time, bytes counted and dropped; ${PULL_RUNS} runs each, median):`,
    );
    const urls = { tls: edgeLike.registryUrl, plain: plain.registryUrl, distribution: `http://${distribution.host}` };
    const wire = await interleaved((side) => wirePull(urls[side], "curl", "latest"));
    const wireDist = median(wire.distribution);
    line("CNCF distribution (plain http)", seconds(wireDist), "");
    line(
      "worker, https from workerd",
      seconds(median(wire.tls)),
      "",
      `${(median(wire.tls) / wireDist).toFixed(2)}x distribution's time`,
    );
    line(
      "worker behind the plain-http front",
      seconds(median(wire.plain)),
      "",
      `${(median(wire.plain) / wireDist).toFixed(2)}x distribution's time`,
    );
  } finally {
    await distribution.stop();
    await edgeLike.stop();
    await plain.stop();
  }
}

/** Round trip added to each R2 read at a far location (BENCH_R2_RTT_MS, default 80 ms). */
const R2_RTT_MS = Number(process.env.BENCH_R2_RTT_MS ?? 80);
const EDGE_ROUNDS = 9;

/** CPU seconds (user + system) of every workerd process under this one: the worker and the local R2 it calls. */
async function workerdCpuSeconds(): Promise<number> {
  const ticks = 100; // USER_HZ on Linux
  const children = new Map<number, number[]>();
  const stats = new Map<number, { comm: string; cpu: number }>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, "utf8").catch(() => null);
    if (!stat) continue;
    const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const [ppid, utime, stime] = [Number(fields[1]), Number(fields[11]), Number(fields[12])];
    stats.set(Number(entry), { comm, cpu: (utime + stime) / ticks });
    children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
  }
  let total = 0;
  const stack = [process.pid];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    for (const child of children.get(pid) ?? []) {
      if (stats.get(child)?.comm === "workerd") total += stats.get(child)!.cpu;
      stack.push(child);
    }
  }
  return total;
}

/**
 * 6. The edge cache, modelled: worker instances as Cloudflare locations, each with its own isolate and cache
 * (scripts/instrumented-worker.js), in front of one bucket; at a far location each R2 read waits R2_RTT_MS first.
 */
async function edgeFigures(scratch: string, pkgsPath: string): Promise<void> {
  const locations = Array.from({ length: EDGE_ROUNDS }, (_, i) => [
    { name: `far-${i}`, r2DelayMs: R2_RTT_MS },
    { name: `near-${i}`, r2DelayMs: 0 },
    // As before the edge cache: every pull reads every object from R2.
    { name: `uncached-${i}`, r2DelayMs: R2_RTT_MS, vars: { EDGE_CACHE: "off" } },
    { name: `near-uncached-${i}`, r2DelayMs: 0, vars: { EDGE_CACHE: "off" } },
  ]).flat();
  const stack = await startStack({
    pkgsPath,
    port: 0,
    builderPort: 0,
    builderDataDir: join(scratch, "edge-builder"),
    workerStateDir: join(scratch, "edge-worker"),
    instrument: { locations },
  });
  try {
    const image = "curl";
    const built = await coldManifest(stack, image);
    const manifest = JSON.parse(
      (await fetchText(new URL(`${stack.registryUrl}/v2/${image}/manifests/latest`), OCI_MANIFEST)).body,
    ) as ImageManifest;
    const bytes = [manifest.config, ...manifest.layers].reduce((sum, blob) => sum + blob.size, 0);
    console.log(
      `\nEdge cache: warm pulls of ${image} (${manifest.layers.length} layers, ${mib(bytes)}; built in ${seconds(built.ms)}) at modelled ` +
        `locations, each with its own isolate and cache; far: every R2 read ${R2_RTT_MS} ms later (${EDGE_ROUNDS} locations each, median):`,
    );
    const reads = async (location: string) => {
      const answer = JSON.parse(
        (await fetchText(new URL(`${stack.locationUrls[location]}/.instrument/r2-reads`))).body,
      ) as { reads: { key: string }[] };
      return answer.reads;
    };
    const reset = (location: string) =>
      fetch(`${stack.locationUrls[location]}/.instrument/r2-reads/reset`, { method: "POST" });
    const results = {
      farCold: [] as number[],
      farWarm: [] as number[],
      near: [] as number[],
      nearWarm: [] as number[],
      uncached: [] as number[],
      nearUncached: [] as number[],
    };
    const readCounts = {
      farCold: [] as number[],
      farWarm: [] as number[],
      farWarmByDigest: [] as number[],
      near: [] as number[],
      uncached: [] as number[],
    };
    const cpu = { cached: 0, r2: 0, r2Only: 0, cachedBytes: 0, r2Bytes: 0 };
    for (let i = 0; i < EDGE_ROUNDS; i++) {
      const far = `far-${i}`;
      const near = `near-${i}`;
      await reset(far);
      results.farCold.push(await wirePull(stack.locationUrls[far], image, "latest"));
      readCounts.farCold.push((await reads(far)).length);
      await new Promise((resolve) => setTimeout(resolve, 2_000)); // the cache writes that follow the responses, done
      await reset(far);
      let before = await workerdCpuSeconds();
      results.farWarm.push(await wirePull(stack.locationUrls[far], image, "latest"));
      cpu.cached += (await workerdCpuSeconds()) - before;
      cpu.cachedBytes += bytes;
      const warmReads = await reads(far);
      readCounts.farWarm.push(warmReads.length);
      readCounts.farWarmByDigest.push(warmReads.filter((read) => /^(blobs|manifests)\//.test(read.key)).length);
      await reset(near);
      before = await workerdCpuSeconds();
      results.near.push(await wirePull(stack.locationUrls[near], image, "latest"));
      cpu.r2 += (await workerdCpuSeconds()) - before;
      cpu.r2Bytes += bytes;
      readCounts.near.push((await reads(near)).length);
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      results.nearWarm.push(await wirePull(stack.locationUrls[near], image, "latest"));
      const uncached = `uncached-${i}`;
      await wirePull(stack.locationUrls[uncached], image, "latest");
      await reset(uncached);
      results.uncached.push(await wirePull(stack.locationUrls[uncached], image, "latest"));
      readCounts.uncached.push((await reads(uncached)).length);
      // Next to the bucket without the cache: every blob from R2, nothing written to a cache on the way.
      before = await workerdCpuSeconds();
      results.nearUncached.push(await wirePull(stack.locationUrls[`near-uncached-${i}`], image, "latest"));
      cpu.r2Only += (await workerdCpuSeconds()) - before;
    }
    const [farCold, farWarm, near, nearWarm] = [
      median(results.farCold),
      median(results.farWarm),
      median(results.near),
      median(results.nearWarm),
    ];
    const range = (values: number[]) => `${Math.min(...values)}-${Math.max(...values)}`;
    line("far location, first pull (its cache cold)", seconds(farCold), `R2 reads ${range(readCounts.farCold)}`);
    line(
      "far location, second pull",
      seconds(farWarm),
      `R2 reads ${range(readCounts.farWarm)}, by digest ${range(readCounts.farWarmByDigest)}`,
      `${(farWarm / near).toFixed(2)}x the first pull next to the bucket, target <= 1.15x; target 0 reads by digest`,
    );
    line("location next to the bucket, first pull", seconds(near), `R2 reads ${range(readCounts.near)}`);
    line(
      "location next to the bucket, second pull",
      seconds(nearWarm),
      "",
      `far's second pull ${(farWarm / nearWarm).toFixed(2)}x this`,
    );
    line(
      "location next to the bucket without the edge cache",
      seconds(median(results.nearUncached)),
      "first pull: R2 only, no cache written",
    );
    line(
      "far location without the edge cache, second pull",
      seconds(median(results.uncached)),
      `R2 reads ${range(readCounts.uncached)}`,
      `${(median(results.uncached) / farWarm).toFixed(1)}x the cached one`,
    );
    const perMiB = (cpuSeconds: number, served: number) =>
      `${((cpuSeconds * 1000) / (served / MiB)).toFixed(1)} ms/MiB`;
    line(
      "workerd CPU per MiB served, from the cache",
      perMiB(cpu.cached, cpu.cachedBytes),
      "worker and local runtime together",
    );
    line(
      "workerd CPU per MiB served, from R2, filling the cache",
      perMiB(cpu.r2, cpu.r2Bytes),
      "worker, local R2 and local cache together",
    );
    line(
      "workerd CPU per MiB served, from R2, no edge cache",
      perMiB(cpu.r2Only, cpu.r2Bytes),
      "worker and local R2 together",
    );
  } finally {
    await stack.stop();
  }
}

async function startDistribution(scratch: string): Promise<{ host: string; stop: () => Promise<void> }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const dir = join(scratch, "distribution");
  await mkdir(dir, { recursive: true });
  const config = join(dir, "config.yml");
  await writeFile(
    config,
    [
      "version: 0.1",
      "log: { level: error }",
      "storage:",
      `  filesystem: { rootdirectory: ${join(dir, "data")} }`,
      "http:",
      `  addr: 127.0.0.1:${port}`,
      "",
    ].join("\n"),
  );
  const child = spawn("docker-registry", ["serve", config], { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    const up = await fetch(`http://127.0.0.1:${port}/v2/`).then(
      (r) => r.ok,
      () => false,
    );
    if (up) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    host: `127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
    },
  };
}

main().catch((error) => {
  console.error(`benchmark failed: ${(error as Error).stack ?? error}`);
  process.exit(1);
});
