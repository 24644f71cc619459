// `npm run bench`: the registry's core numbers on real software (the Debian-derived offline package set),
// each printed beside what it is compared with, measured side by side in one run. See README "Benchmark".
import { execFile, spawn } from "node:child_process";
import { cp, mkdtemp, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { NixSystem } from "../common/image-name.ts";
import type { StorePathNode } from "../builder-service/closure.ts";
import { planLayers, DEFAULT_LAYER_BUDGET } from "../builder-service/layering.ts";
import { loadPopularity, type Popularity } from "../builder-service/popularity.ts";
import { build, resolveLatest } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT, startBuilder, startStack } from "../scripts/local-stack.ts";
import { nixeryLayers, NIXERY_STORE_LAYER_BUDGET } from "./nixery-layering.ts";
import { sharing, type CorpusImage } from "./sharing.ts";
import { wirePull } from "./wire-pull.ts";

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
async function imageClosure(pkgsPath: string, packages: string[], system: NixSystem = "x86_64-linux"): Promise<Closure> {
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
  const image = JSON.parse(await readFile(join(out, "image.json"), "utf8")) as { graph: StorePathNode[]; topLevel: string[] };
  return { graph: image.graph, topLevel: image.topLevel };
}

/**
 * A copy of the package set whose every package has new store paths (a salt in packages.json, see
 * nix/debian-pkgs/default.nix), so a build from it is cold in Nix too, without deleting anything from the store.
 */
async function saltedCopy(base: string, into: string, salt: string): Promise<string> {
  await cp(base, into, { recursive: true });
  const file = join(into, "packages.json");
  const data = JSON.parse(await readFile(file, "utf8")) as Record<string, unknown>;
  await writeFile(file, JSON.stringify({ ...data, salt }));
  return into;
}

/** The least any builder must do: build the closure with Nix, then one tar | gzip of it. */
async function floorBuild(pkgsPath: string, packages: string[]): Promise<{ nixMs: number; tarMs: number }> {
  const nix = await time(() => imageClosure(pkgsPath, packages));
  const closure = nix.value;
  const tar = await time(
    () =>
      new Promise<void>((resolve, reject) => {
        const relative = closure.graph.map((node) => node.path.slice(1)).sort();
        const child = spawn("sh", ["-c", 'tar -cf - -C / "$@" | gzip -6 > /dev/null', "tar", ...relative], { stdio: "inherit" });
        child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`tar | gzip exited with ${code}`))));
      }),
  );
  return { nixMs: nix.ms, tarMs: tar.ms };
}

async function machine(): Promise<string> {
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  return `${os.cpus().length} cores (${cpu}), ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${(await sh("nix-build", ["--version"])).trim()}`;
}

/** `npm run bench -- builds` or `-- pull` runs one half; no argument runs both. */
const only = process.argv[2];

async function main(): Promise<void> {
  if (only !== undefined && only !== "builds" && only !== "pull") throw new Error(`unknown part "${only}": use builds or pull`);
  const scratch = await mkdtemp(join(os.tmpdir(), "bench-"));
  console.log(`Machine: ${await machine()}\n`);

  const basePath = join(scratch, "debian-pkgs");
  const generated = await time(() => sh("node", [join(PROJECT_ROOT, "nix/debian-pkgs/generate.mjs"), basePath, "--quiet"]));
  console.log(`Package set: generated from this machine's Debian packages in ${seconds(generated.ms)}\n`);
  // Two salted copies: one for the floor, one for the builder; both build every package afresh.
  const run = `${Date.now()}`;
  const floorPath = await saltedCopy(basePath, join(scratch, "floor-pkgs"), `floor-${run}`);
  const pkgsPath = await saltedCopy(basePath, join(scratch, "builder-pkgs"), `builder-${run}`);
  if (only === undefined || only === "builds") await buildFigures(scratch, basePath, floorPath, pkgsPath);
  if (only === undefined || only === "pull") await pullFigures(scratch, pkgsPath);
  await rm(scratch, { recursive: true, force: true });
}

async function buildFigures(scratch: string, basePath: string, floorPath: string, pkgsPath: string): Promise<void> {
  const popularityFile = join(basePath, "popularity.json");
  const popularity: Popularity | undefined = await loadPopularity(popularityFile).catch(() => undefined);
  const secret = "benchmark-secret-0123456789abcdef";
  const builder = await startBuilder({ pkgsPath, builderPort: 0, builderDataDir: join(scratch, "builder"), secret });
  const counters = async () =>
    (await (await fetch(`${builder.url}/health`)).json()) as { tarBytesWritten: number; bytesStored: number; layersWritten: number; layersReused: number };
  try {
    const { revision } = await resolveLatest(builder.url, secret);

    // 1. Cold build against its floor.
    console.log(`Cold build of ${COLD_IMAGE.join("/")} (every package built afresh on both sides):`);
    const floor = await floorBuild(floorPath, COLD_IMAGE);
    const cold = await time(() => build(builder.url, secret, COLD_IMAGE, revision));
    const closure = await imageClosure(pkgsPath, COLD_IMAGE);
    const closureBytes = closure.graph.reduce((sum, node) => sum + node.narSize, 0);
    const floorMs = floor.nixMs + floor.tarMs;
    line(
      "builder, request to stored manifest",
      seconds(cold.ms),
      `floor ${seconds(floorMs)} (nix-build ${seconds(floor.nixMs)} + tar | gzip ${seconds(floor.tarMs)})`,
      `${(cold.ms / floorMs).toFixed(2)}x, target <= 1.5x`,
    );
    line("closure", `${closure.graph.length} paths, ${mib(closureBytes)}`, `${cold.value.layers.length} layers`);

    // 2. A second image that shares most of the first.
    console.log(`\nThen ${SECOND_IMAGE.join("/")}:`);
    const closure2 = await imageClosure(pkgsPath, SECOND_IMAGE);
    const known = new Set(closure.graph.map((node) => node.path));
    const fresh = closure2.graph.filter((node) => !known.has(node.path));
    const freshBytes = fresh.reduce((sum, node) => sum + node.narSize, 0);
    const before = await counters();
    const second = await time(() => build(builder.url, secret, SECOND_IMAGE, revision));
    const after = await counters();
    const tarred = after.tarBytesWritten - before.tarBytesWritten;
    const written = after.layersWritten - before.layersWritten;
    const rootfsLayerTar = tarred - freshBytes;
    line(
      "bytes newly tarred",
      mib(tarred),
      `new store paths alone: ${mib(freshBytes)} (${fresh.length} paths) + root filesystem`,
      written <= fresh.length + 1 ? `${written} layers written = new paths + 1, ${second.value.layers.length - written} reused` : `${written} layers written, more than ${fresh.length} + 1`,
    );
    line("root-filesystem layer and tar headers", mib(Math.max(0, rootfsLayerTar)), "");
    line("bytes newly stored (gzip)", mib(after.bytesStored - before.bytesStored), `image total ${mib(second.value.layers.reduce((s, l) => s + l.size, 0))}`);
    line("build time", seconds(second.ms), "");

    // 3. Sharing across a corpus, against Nixery's grouping of the same closures.
    console.log(`\nSharing across ${CORPUS.length} images (store-path bytes; root-filesystem layers left out of both):`);
    const closures = [];
    for (const packages of CORPUS) closures.push({ name: packages.join("/"), closure: await imageClosure(pkgsPath, packages) });
    const popularityFn = popularity ?? (() => undefined);
    const ours: CorpusImage[] = closures.map(({ name, closure }) => ({ name, layers: planLayers(closure.graph, DEFAULT_LAYER_BUDGET, popularity) }));
    const nixery: CorpusImage[] = closures.map(({ name, closure }) => ({ name, layers: nixeryLayers(closure.graph, closure.topLevel, popularityFn) }));
    // Ours again with no more layers than Nixery gives each image (plus the root filesystem).
    const oursTight: CorpusImage[] = closures.map(({ name, closure }, i) => ({
      name,
      layers: planLayers(closure.graph, nixery[i].layers.length + 1, popularity),
    }));
    const [a, b, c] = [sharing(ours), sharing(nixery), sharing(oursTight)];
    const describe = (f: ReturnType<typeof sharing>) => `shared ${mib(f.sharedBytes)}, stored ${mib(f.storedBytes)} of ${mib(f.totalBytes)}, layers ${f.layers.min}-${f.layers.max} (mean ${f.layers.mean.toFixed(1)})`;
    line("Nixery's grouping (budget 94)", "", describe(b));
    line(`ours (budget ${DEFAULT_LAYER_BUDGET - 1} store layers)`, "", describe(a), `${(a.sharedBytes / Math.max(1, b.sharedBytes)).toFixed(2)}x Nixery's shared bytes`);
    line("ours, held to Nixery's layer count per image", "", describe(c), `${(c.sharedBytes / Math.max(1, b.sharedBytes)).toFixed(2)}x Nixery's shared bytes`);
    console.log(`  popularity data: ${popularity ? popularityFile : "none (reference counts within each closure)"}`);
  } finally {
    await builder.stop();
  }
}

const SIDES = ["tls", "plain", "distribution"] as const;
type Side = (typeof SIDES)[number];

async function pullFigures(scratch: string, pkgsPath: string): Promise<void> {
  // 4. Warm pulls: the worker (R2) against CNCF distribution serving the same image, runs interleaved.
  console.log(`\nWarm pull of curl with skopeo (${PULL_RUNS} runs each, interleaved, median):`);
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
      const result = await time(() => sh("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${reference}`, `oci:${dir}:img`]));
      await rm(dir, { recursive: true, force: true });
      return result.ms;
    };
    const sides = {
      tls: `${edgeLike.registryHost}/curl:latest`,
      plain: `${plain.registryHost}/curl:latest`,
      distribution: `${distribution.host}/curl:latest`,
    };
    for (const reference of [sides.tls, sides.plain]) {
      await pull(reference); // builds, then fills R2
      await pull(reference);
    }
    await sh("skopeo", ["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", `docker://${sides.plain}`, `docker://${sides.distribution}`]);
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
    line("worker, https from workerd (as at the edge)", seconds(tls), `range ${spread(times.tls)}`, `${(tls / dist).toFixed(2)}x distribution's time, target <= 1x`);
    const fronted = median(times.plain);
    line("worker behind npm start's plain-http front", seconds(fronted), `range ${spread(times.plain)}`, `${(fronted / dist).toFixed(2)}x distribution's time`);

    // The same pulls with a client that does nothing but receive (bench/wire-pull.ts): the servers alone.
    console.log(`\nThe same, served only (manifest and every blob 6 at a time, bytes counted and dropped; ${PULL_RUNS} runs each, median):`);
    const urls = { tls: edgeLike.registryUrl, plain: plain.registryUrl, distribution: `http://${distribution.host}` };
    const wire = await interleaved((side) => wirePull(urls[side], "curl", "latest"));
    const wireDist = median(wire.distribution);
    line("CNCF distribution (plain http)", seconds(wireDist), "");
    line("worker, https from workerd", seconds(median(wire.tls)), "", `${(median(wire.tls) / wireDist).toFixed(2)}x distribution's time`);
    line("worker behind the plain-http front", seconds(median(wire.plain)), "", `${(median(wire.plain) / wireDist).toFixed(2)}x distribution's time`);
  } finally {
    await distribution.stop();
    await edgeLike.stop();
    await plain.stop();
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
    const up = await fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.ok, () => false);
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
