// Layers written while Nix downloads (builder-service/early-layers.ts). A salted copy of the Debian-derived set (new
// store paths for every package) is built once by a builder, as on a new builder with no binary cache: Nix builds
// the packages, and no layer is written early. Its curl closure then goes into a local binary cache served at
// 3 MiB/s (test/support/paced-binary-cache.ts) and is deleted from the store: a builder substituting from that cache
// only downloads, writes layers while Nix does, and gives the manifest digest a builder with BUILDER_EARLY_LAYERS=0
// gives from the same downloads, and the first builder gave.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { build, resolveLatest } from "../scripts/builder-calls.ts";
import { OFFLINE_NIX_CONFIG, PROJECT_ROOT, startBuilder, startLocalBucket } from "../scripts/local-stack.ts";
import {
  copyToBinaryCache,
  deleteFromStore,
  startPacedBinaryCache,
  storeClosure,
  validPaths,
  type PacedBinaryCache,
} from "./support/paced-binary-cache.ts";

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
const secret = "fetched-layers-secret-0123456789abcdef";
const nixEnv = { ...process.env, NIX_CONFIG: OFFLINE_NIX_CONFIG };

let scratch: string;
let setDir: string;
let cache: PacedBinaryCache;
/** curl's closure, as the first build left it: every path salted, this file's own. */
let closure: string[];
/** The manifest digest of the first build, where Nix built every package. */
let builtDigest: string;

interface BuildLogLine {
  earlyLayers: number;
  earlyLayersUnused: number;
  manifest: string;
  nixMs: number;
  layersMs: number;
  totalMs: number;
}

/** Builds curl on a builder of its own, writing into a bucket of its own; its build log line and what else it logged. */
async function buildCurl(name: string, builderEnv: Record<string, string>) {
  const bucket = await startLocalBucket(join(scratch, `${name}-bucket`));
  const builder = await startBuilder({
    pkgsPath: setDir,
    builderPort: 0,
    builderDataDir: join(scratch, `${name}-builder`),
    secret,
    s3Env: bucket.s3Env,
    builderEnv,
  });
  try {
    const { revision } = await resolveLatest(builder.url, secret);
    const record = await build(builder.url, secret, ["curl"], revision);
    const events = builder.logLines.flatMap((line) => {
      try {
        return [JSON.parse(line) as { event?: string }];
      } catch {
        return [];
      }
    });
    const logged = events.find((entry) => entry.event === "build") as BuildLogLine | undefined;
    expect(logged).toBeDefined();
    expect(logged!.manifest).toBe(record.image!.oci);
    return { digest: record.image!.oci, logged: logged!, events };
  } finally {
    // Stopped before the store paths are deleted again: a running build roots its closure.
    await builder.stop();
    await bucket.dispose();
  }
}

const substituting = () => ({
  NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nsubstituters = ${cache.url}\nrequire-sigs = false`,
});

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "fetched-layers-"));
  setDir = join(scratch, "debian-pkgs");
  await execFileAsync("node", [join(PROJECT_ROOT, "package-sets/debian-pkgs/generate.mjs"), setDir, "--quiet"]);
  // New store paths for every package (package-sets/debian-pkgs/default.nix mixes the salt into each).
  const packagesFile = join(setDir, "packages.json");
  const set = JSON.parse(await readFile(packagesFile, "utf8")) as Record<string, unknown>;
  await writeFile(packagesFile, JSON.stringify({ ...set, salt: `fetched-layers-${Date.now()}-${process.pid}` }));
  cache = await startPacedBinaryCache(join(scratch, "cache"), 3 * MiB);
});

afterAll(async () => {
  await cache?.close();
  // The salted paths are this file's alone; deleted so that each run leaves the store as it found it.
  if (closure) await deleteFromStore(await validPaths(closure, nixEnv), nixEnv).catch(() => undefined);
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe("layers written while Nix downloads", () => {
  it("a plan that builds packages writes no layer early", async () => {
    // No substituter: Nix builds every package of curl's closure, and the builder layers them after Nix is done.
    const { digest, logged, events } = await buildCurl("built", {});
    builtDigest = digest;
    expect(logged).toMatchObject({ earlyLayers: 0, earlyLayersUnused: 0 });
    expect(events.filter((entry) => entry.event === "early-layers-stopped")).toEqual([]);
    // The binary cache: the salted closure Nix just built, curl's and iana-etc's (in every image). The set's busybox
    // (which builds every package and the image's derivation) and cacert are not salted (other sets' images use
    // them): they stay, as on a builder that has built anything.
    const { stdout } = await execFileAsync("nix-build", ["--no-out-link", setDir, "-A", "curl", "-A", "iana-etc"], {
      env: nixEnv,
    });
    closure = await storeClosure(stdout.split("\n").filter(Boolean), nixEnv);
    expect(closure.filter((path) => /-(busybox|cacert)-\d/.test(path))).toEqual([]);
    await copyToBinaryCache(join(scratch, "cache"), closure, nixEnv);
    await deleteFromStore(closure, nixEnv);
    expect(await validPaths(closure, nixEnv)).toEqual([]);
  });

  it("where Nix only downloads, layers are written while it does, and the image is the one written after it", async () => {
    expect(closure).toBeDefined();
    const early = await buildCurl("early", substituting());
    // Downloaded, not built: every path came from the paced cache.
    expect(await validPaths(closure, nixEnv)).toEqual(closure);
    const downloaded = cache.bytesServed;
    expect(downloaded).toBeGreaterThan(5 * MiB);
    expect(early.logged.earlyLayers).toBeGreaterThan(0);
    expect(early.logged.earlyLayersUnused).toBe(0);
    expect(early.digest).toBe(builtDigest);

    // The same downloads by a builder that writes every layer after Nix is done.
    await deleteFromStore(closure, nixEnv);
    const late = await buildCurl("late", { ...substituting(), BUILDER_EARLY_LAYERS: "0" });
    expect(cache.bytesServed - downloaded).toBe(downloaded);
    expect(late.logged).toMatchObject({ earlyLayers: 0, earlyLayersUnused: 0 });
    expect(late.digest).toBe(early.digest);
    console.log(
      `curl from a binary cache at 3 MiB/s (${(downloaded / MiB).toFixed(1)} MiB): ` +
        `${early.logged.earlyLayers} layers written early, total ${early.logged.totalMs} ms ` +
        `(nix ${early.logged.nixMs}, layers ${early.logged.layersMs}); ` +
        `BUILDER_EARLY_LAYERS=0: total ${late.logged.totalMs} ms (nix ${late.logged.nixMs}, layers ${late.logged.layersMs})`,
    );
  });
});
