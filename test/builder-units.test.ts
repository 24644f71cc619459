// The builder's pure parts, without a running stack: tarballs, layering, request signing, names and ranges.
import { execFileSync } from "node:child_process";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, type AddressInfo, type Socket } from "node:net";
import { createHash, randomUUID } from "node:crypto";
import { createWriteStream, readFileSync } from "node:fs";
import { mkdtemp, mkdir, readFile, readlink, rename, writeFile, chmod, symlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { finished } from "node:stream/promises";
import { gunzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import {
  NONCE_HEADER,
  SeenNonces,
  signRequest,
  verifyRequest,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
} from "../common/builder-api.ts";
import { parseDigest, type Digest } from "../common/digest.ts";
import { parseRange, satisfyRange } from "../common/http-range.ts";
import { parseImageName, type LayerCompression } from "../common/image-name.ts";
import { classifyTag, tagProblem } from "../common/tag.ts";
import { planLayers, topologicalOrder } from "../builder-service/layering.ts";
import { writeLayer } from "../builder-service/layer-pipeline.ts";
import { lookupsInOrder, mapWithLimit } from "../builder-service/bounded-map.ts";
import { BlockCompressor } from "../builder-service/block-compression.ts";
import type { StagedBlob } from "../builder-service/blob-store.ts";
import { rootfsEntries, storePathEntries, storePathEntriesUnder, type TarEntry } from "../builder-service/tarball.ts";
import type { StorePathNode } from "../builder-service/closure.ts";
import { validateBuildRequest, validateJobRequest } from "../builder-service/build-request.ts";
import { nixConfig, probeNix, readNixSettings } from "../builder-service/nix-settings.ts";
import { thrownMessage } from "../builder-service/nix-runner.ts";
import { ChannelSource } from "../builder-service/sources/channel.ts";
import { GitRepoSource } from "../builder-service/sources/git-repo.ts";
import { LocalPathSource } from "../builder-service/sources/local-path.ts";
import { CommandTimeoutError, runPipeline } from "../builder-service/time-limited-command.ts";
import type { Logger } from "../builder-service/log.ts";
import { referenceTarStream } from "./support/reference-tar.ts";
import { OFFLINE_NIX_CONFIG } from "../scripts/local-stack.ts";

const scratch = await mkdtemp(join(tmpdir(), "units-"));
afterAll(() => rm(scratch, { recursive: true, force: true }));

/**
 * Where writeLayer puts a layer, reduced to files: staged bytes go to a temporary file, whose hash written() reads,
 * which commit checks against the digest and size it is given and renames to <dir>/<hex>.
 */
function folderStore(dir: string): { stage(): Promise<StagedBlob>; commits: { digest: Digest; size: number }[] } {
  const commits: { digest: Digest; size: number }[] = [];
  return {
    commits,
    async stage() {
      await mkdir(dir, { recursive: true });
      const path = join(dir, `staged-${randomUUID()}`);
      const sink = createWriteStream(path);
      return {
        sink,
        written() {
          const bytes = readFileSync(path);
          return { digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, size: bytes.length };
        },
        async commit(digest, size) {
          const bytes = await readFile(path);
          expect(bytes.length).toBe(size);
          expect(`sha256:${createHash("sha256").update(bytes).digest("hex")}`).toBe(digest);
          await rename(path, join(dir, digest.slice("sha256:".length)));
          commits.push({ digest, size });
        },
        async abort() {
          // Once the file is closed: one still being opened would be created after the rm.
          if (!sink.closed) await new Promise<void>((resolve) => sink.once("close", () => resolve()).destroy());
          await rm(path, { force: true });
        },
      };
    },
  };
}

function node(name: string, references: string[] = [], narSize = 1000): StorePathNode {
  const path = `/nix/store/${name.padEnd(32, "a").slice(0, 32)}-${name}`;
  return {
    path,
    references: references.map((r) => `/nix/store/${r.padEnd(32, "a").slice(0, 32)}-${r}`),
    narSize,
    closureSize: narSize,
  };
}

describe("a package set in a local folder", () => {
  it("gives an edited folder a new revision, and takes an unchanged one's copy again without copying it", async () => {
    const folder = join(scratch, "local-set");
    await mkdir(join(folder, "lib"), { recursive: true });
    await writeFile(join(folder, "default.nix"), "{ ... }: { }\n");
    await writeFile(join(folder, "lib", "tool.sh"), "echo one\n");
    const source = new LocalPathSource(folder, 60);
    const revision = async () => (await source.resolve("latest"))?.revision;
    const first = await revision();
    expect(first).toMatch(/^[0-9a-z]{32}$/);
    // Without Nix on the PATH: an unchanged folder is not copied again, so nothing needs it.
    const path = process.env.PATH;
    process.env.PATH = join(scratch, "no-commands-here");
    try {
      expect(await revision()).toBe(first);
      expect(await source.nixSource(first!)).toEqual({ kind: "path", path: expect.stringContaining(first!) });
    } finally {
      process.env.PATH = path;
    }
    // The same size, other bytes; then the executable bit; then a new file in a subfolder.
    await writeFile(join(folder, "lib", "tool.sh"), "echo two\n");
    const edited = await revision();
    expect(edited).not.toBe(first);
    await chmod(join(folder, "lib", "tool.sh"), 0o755);
    const executable = await revision();
    expect(new Set([first, edited, executable]).size).toBe(3);
    await writeFile(join(folder, "lib", "more.nix"), "{ }\n");
    expect(await revision()).not.toBe(executable);
  });
});

describe("layering", () => {
  const graph = [node("glibc"), node("bash", ["glibc"]), node("hello", ["glibc", "bash"]), node("zlib", ["glibc"])];

  it("orders dependencies before dependants, ties by name, whatever order Nix listed them in", () => {
    const names = (g: StorePathNode[]) => topologicalOrder(g).map((n) => n.path.split("-").pop());
    expect(names(graph)).toEqual(["glibc", "bash", "hello", "zlib"]);
    expect(names([...graph].reverse())).toEqual(["glibc", "bash", "hello", "zlib"]);
  });

  it("gives each store path its own layer while the budget allows", () => {
    expect(planLayers(graph, 100).map((l) => l.paths.length)).toEqual([1, 1, 1, 1]);
  });

  it("never exceeds the budget, counting the root-filesystem layer", () => {
    const many = Array.from({ length: 300 }, (_, i) => node(`pkg${String(i).padStart(3, "0")}`, [], 1000 + i));
    const layers = planLayers(many, 10);
    expect(layers.length).toBe(9);
    expect(layers.flatMap((l) => l.paths).sort()).toEqual(many.map((n) => n.path).sort());
    expect(planLayers([...many].reverse(), 10)).toEqual(layers);
  });
});

describe("layers written a few at a time", () => {
  it("starts the largest first and keeps the results in the plan's order", async () => {
    const sizes = [1, 30, 0, 7, 30, 2];
    const started: number[] = [];
    let running = 0;
    let most = 0;
    const results = await mapWithLimit(
      sizes.map((size, index) => ({ size, index })),
      2,
      async ({ size, index }) => {
        started.push(index);
        most = Math.max(most, ++running);
        await new Promise((resolve) => setTimeout(resolve, size));
        running--;
        return size * 10;
      },
      ({ size }) => size,
    );
    expect(started).toEqual([1, 4, 3, 5, 0, 2]);
    expect(most).toBe(2);
    expect(results).toEqual([10, 300, 0, 70, 300, 20]);
  });

  it("looks each layer up the largest first, its writing waiting only for its own answer; a failure fails its asker", async () => {
    const items = [5, 40, 20, 0].map((size, index) => ({ size, index }));
    const asked: number[] = [];
    let running = 0;
    let most = 0;
    const lookups = lookupsInOrder(
      items,
      2,
      async ({ size, index }) => {
        asked.push(index);
        most = Math.max(most, ++running);
        await new Promise((resolve) => setTimeout(resolve, size));
        running--;
        if (index === 3) throw new Error("the bucket did not answer");
        return `record ${index}`;
      },
      ({ size }) => size,
    );
    // The first answer in is the small one started beside the largest.
    const first = await Promise.race(items.slice(0, 3).map(async (item) => [item.index, await lookups.answer(item)]));
    expect(first).toEqual([2, "record 2"]);
    expect(await lookups.answer(items[1])).toBe("record 1");
    expect(await lookups.answer(items[0])).toBe("record 0");
    await expect(lookups.answer(items[3])).rejects.toThrow("the bucket did not answer");
    await lookups.settled();
    expect(asked).toEqual([1, 2, 0, 3]);
    expect(most).toBe(2);
  });
});

describe("tarballs", () => {
  it("are the same bytes for the same tree whatever the host's modes and times, and list parents first", async () => {
    const makeTree = async (dir: string, mode: number) => {
      await mkdir(join(dir, "bin"), { recursive: true });
      await writeFile(join(dir, "bin", "tool"), "#!/bin/sh\necho hi\n");
      await chmod(join(dir, "bin", "tool"), mode);
      await writeFile(join(dir, "README"), "data");
      await symlink("bin/tool", join(dir, "link"));
    };
    // Two copies of one "store path" in different folders with different host modes.
    const a = join(scratch, "a", "nix/store/00000000000000000000000000000000-demo");
    const b = join(scratch, "b", "nix/store/00000000000000000000000000000000-demo");
    await makeTree(a, 0o755);
    await makeTree(b, 0o700);
    const relocate = (entries: TarEntry[], from: string) =>
      entries.map((e) => (e.type === "file" ? { ...e, source: e.source.replace(from, "") } : e));
    const storeA = await storePathEntriesFromRoot(join(scratch, "a"));
    const storeB = await storePathEntriesFromRoot(join(scratch, "b"));
    expect(relocate(storeA, join(scratch, "a"))).toEqual(relocate(storeB, join(scratch, "b")));
    const store = folderStore(join(scratch, "blobs"));
    const layerA = await writeLayer(storeA, store);
    const layerB = await writeLayer(storeB, store);
    expect(layerA).toEqual(layerB);
    // Committed under the digest of the bytes staged, with their size (folderStore checks both).
    expect(store.commits).toEqual([
      { digest: layerA.digest, size: layerA.size },
      { digest: layerA.digest, size: layerA.size },
    ]);
    const tarBytes = execFileSync("gzip", ["-dc", join(scratch, "blobs", layerA.digest.slice(7))]);
    expect(tarBytes.length).toBe(layerA.tarSize);
    expect(`sha256:${createHash("sha256").update(tarBytes).digest("hex")}`).toBe(layerA.diffId);
    const listing = execFileSync("tar", ["-tvzf", join(scratch, "blobs", layerA.digest.slice(7))], {
      encoding: "utf8",
    });
    const lines = listing.trim().split("\n");
    expect(lines[0]).toMatch(/^dr-xr-xr-x 0\/0 +0 1970-01-01 00:00 nix\/?$/);
    expect(lines.some((l) => /^-r-xr-xr-x 0\/0 .* nix\/store\/0{32}-demo\/bin\/tool$/.test(l))).toBe(true);
    expect(lines.some((l) => /^-r--r--r-- 0\/0 .* nix\/store\/0{32}-demo\/README$/.test(l))).toBe(true);
    expect(lines.some((l) => / nix\/store\/0{32}-demo\/link -> bin\/tool$/.test(l))).toBe(true);
  });

  it("throws the staged bytes away when the tree can't be read, and commits nothing", async () => {
    const dir = join(scratch, "aborted");
    const store = folderStore(dir);
    // A file that vanished between listing and tarring (a store path garbage-collected meanwhile).
    const missing: TarEntry[] = [
      { name: "nix", type: "directory", mode: 0o555 },
      { name: "nix/gone", type: "file", mode: 0o444, size: 10, source: join(scratch, "no-such-file") },
    ];
    await expect(writeLayer(missing, store)).rejects.toThrow();
    expect(store.commits).toEqual([]);
    expect(execFileSync("ls", ["-A", dir], { encoding: "utf8" })).toBe("");
  });

  it("refuses paths outside the store", async () => {
    await expect(storePathEntries(["/etc"])).rejects.toThrow(/not a store path/);
  });

  it("root-filesystem entries keep /tmp sticky and sort parents first", () => {
    const entries = rootfsEntries([
      { path: "/tmp", type: "directory", mode: "1777" },
      { path: "/bin/hello", type: "symlink", target: "/nix/store/x-hello/bin/hello" },
      { path: "/bin", type: "directory" },
    ]);
    expect(entries.map((e) => [e.name, e.mode])).toEqual([
      ["bin", 0o755],
      ["bin/hello", 0o777],
      ["tmp", 0o1777],
    ]);
  });
});

describe("tar written into compression blocks", () => {
  // A store path with every case a tar header has to get right, tarred by the builder's writer and by tar-stream's
  // pack (the writer before it, test/support/reference-tar.ts): the same bytes, compressed and not.
  const root = join(scratch, "tar-cases");
  const storePath = "/nix/store/22222222222222222222222222222222-cases";
  const dir = join(root, storePath);
  const longComponent = "c".repeat(120);
  const longTarget = `../${"t".repeat(40)}/${"u".repeat(40)}/${"v".repeat(40)}`;
  const deep = ["d".repeat(50), "e".repeat(50), "f".repeat(50)].join("/");
  const sized = (bytes: number, seed: number) => Buffer.from(Array.from({ length: bytes }, (_, i) => (i * seed) % 251));
  const files: [string, Buffer][] = [
    ["empty", Buffer.alloc(0)],
    ["one-record", sized(512, 7)],
    ["two-records", sized(1024, 11)],
    ["short", sized(100, 13)],
    ["four-blocks-and-a-bit", sized(4 * 4096 + 3, 17)],
    ["larger-than-a-block", sized(1024 * 1024 + 4096 + 5, 19)],
    [`${deep}/long-path-in-a-ustar-prefix`, sized(600, 23)],
    [longComponent, sized(10, 29)],
    ["caf\u00e9-non-ascii", sized(20, 31)],
  ];
  let made = false;
  const entriesOfCases = async () => {
    if (made) return storePathEntriesUnder(root, [storePath]);
    made = true;
    await mkdir(join(dir, deep), { recursive: true });
    for (const [name, bytes] of files) await writeFile(join(dir, name), bytes);
    await chmod(join(dir, "short"), 0o755);
    await symlink("short", join(dir, "short-link"));
    await symlink(longTarget, join(dir, "long-link"));
    await symlink(longTarget, join(dir, `${longComponent}-link`));
    return storePathEntriesUnder(root, [storePath]);
  };
  const referenceTar = async (entries: TarEntry[]) => Buffer.concat(await referenceTarStream(entries).toArray());
  const compressedBy = async (tar: Buffer, compression: LayerCompression, blockBytes?: number) => {
    const compressor = new BlockCompressor({ compression, parallelism: 2, blockBytes });
    const chunks: Buffer[] = [];
    compressor.on("data", (chunk: Buffer) => chunks.push(chunk));
    compressor.end(tar);
    await finished(compressor);
    return Buffer.concat(chunks);
  };
  const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

  it("is tar-stream's tar byte for byte, long names and targets in its pax records, whatever the blocks", async () => {
    const entries = await entriesOfCases();
    expect(entries.some((e) => Buffer.byteLength(e.name) > 155 + 100)).toBe(false);
    const reference = await referenceTar(entries);
    // The tar the builder's writer made of this tree before the tar was written into blocks (commit 95a325f, on any
    // umask): a change here changes layers' diff_ids and digests, which needs LAYER_FORMAT_VERSION bumped.
    expect([sha256(reference), reference.length]).toEqual([
      "sha256:c6307e86515d9765c77918472be853e361b50e72f0502a795e8c8badec558723",
      1088512,
    ]);
    // tar-stream's pax form is in there (names, link targets), as is a ustar prefix.
    expect(reference.includes(`path=${storePath.slice(1)}/${longComponent}\n`)).toBe(true);
    expect(reference.includes(`linkpath=${longTarget}\n`)).toBe(true);
    const out = join(scratch, "tar-cases-blobs");
    const store = folderStore(out);
    const small = entries.filter((e) => !e.name.endsWith("/larger-than-a-block"));
    const smallReference = await referenceTar(small);
    // Default blocks (1 MiB), then small ones: every file and header runs across block ends; with 512 bytes, every
    // record is a block.
    for (const [compression, blockBytes, parallelism, listed, tarred] of [
      ["gzip", undefined, 1, entries, reference],
      ["gzip", undefined, 3, entries, reference],
      ["zstd", undefined, 2, entries, reference],
      ["gzip", 4096, 2, entries, reference],
      ["zstd", 4096, 1, entries, reference],
      ["gzip", 512, 3, small, smallReference],
    ] as const) {
      const layer = await writeLayer(listed, store, { compression, parallelism, blockBytes });
      const blob = readFileSync(join(out, layer.digest.slice("sha256:".length)));
      const tar = execFileSync(compression, ["-dc"], { input: blob, maxBuffer: 64 * 1024 * 1024 });
      expect(tar.equals(tarred)).toBe(true);
      expect(layer).toEqual({
        digest: sha256(await compressedBy(tarred, compression, blockBytes)),
        diffId: sha256(tarred),
        size: blob.length,
        tarSize: tarred.length,
      });
    }
    // GNU tar reads it entry by entry back into the same tree.
    const layer = await writeLayer(entries, store);
    const unpacked = join(scratch, "tar-cases-unpacked");
    await mkdir(unpacked);
    execFileSync("tar", ["-xzf", join(out, layer.digest.slice("sha256:".length)), "-C", unpacked]);
    for (const [name, bytes] of files) expect(readFileSync(join(unpacked, storePath, name)).equals(bytes)).toBe(true);
    expect(await readlink(join(unpacked, storePath, "long-link"))).toBe(longTarget);
    expect(await readlink(join(unpacked, storePath, `${longComponent}-link`))).toBe(longTarget);
    expect(await readlink(join(unpacked, storePath, "short-link"))).toBe("short");
  });

  it("gives an empty layer tar-stream's end of archive alone", async () => {
    const store = folderStore(join(scratch, "empty-layer"));
    const layer = await writeLayer([], store);
    const reference = await referenceTar([]);
    expect(reference).toEqual(Buffer.alloc(1024));
    expect(layer).toMatchObject({ diffId: sha256(reference), tarSize: 1024 });
    expect(layer.digest).toBe(sha256(await compressedBy(reference, "gzip")));
  });

  it("fails the layer with the store's error when the staged blob cannot take the bytes, and aborts it", async () => {
    const entries = await entriesOfCases();
    let aborted = 0;
    const failing = {
      stage: async (): Promise<StagedBlob> => ({
        sink: new Writable({ write: (_chunk, _encoding, callback) => callback(new Error("no space left on device")) }),
        written: () => ({ digest: `sha256:${"0".repeat(64)}`, size: 0 }),
        commit: () => Promise.reject(new Error("a failed layer must not be committed")),
        abort: async () => void aborted++,
      }),
    };
    for (const blockBytes of [undefined, 4096])
      await expect(writeLayer(entries, failing, { blockBytes, parallelism: 2 })).rejects.toThrow(
        "no space left on device",
      );
    expect(aborted).toBe(2);
  });

  it("fails the layer, committing nothing, when a file is not the size it was listed with", async () => {
    const entries = (await entriesOfCases()).filter((e) => !e.name.endsWith("/larger-than-a-block"));
    const dir = join(scratch, "changed");
    const store = folderStore(dir);
    const resized = (name: string, size: number) =>
      entries.map((e) => (e.type === "file" && e.name.endsWith(`/${name}`) ? { ...e, size } : e));
    // Longer or shorter than listed; with 512-byte blocks, the listed end of "two-records" is a block's end, where
    // the writer reads once more to see the file end.
    for (const [name, size, blockBytes, problem] of [
      ["two-records", 1000, 4096, "now longer"],
      ["two-records", 512, 512, "now longer"],
      ["two-records", 1030, 4096, "ended after 1024"],
      ["empty", 1, 4096, "ended after 0"],
      ["one-record", 0, 4096, "now longer"],
    ] as const)
      await expect(writeLayer(resized(name, size), store, { blockBytes })).rejects.toThrow(
        `-cases/${name} changed while its layer was written (listed with ${size} bytes, ${problem})`,
      );
    expect(store.commits).toEqual([]);
    expect(execFileSync("ls", ["-A", dir], { encoding: "utf8" })).toBe("");
  });
});

describe("layer compression in blocks", () => {
  // A 3.5 MiB store path: four 1 MiB blocks, the last short. Compressible but not trivially (text-like lines).
  const big = join(scratch, "big", "nix/store/11111111111111111111111111111111-big");
  const entriesOfBig = async () => {
    await mkdir(big, { recursive: true });
    const lines: string[] = [];
    for (let i = 0, n = 7, length = 0; length < 3.5 * 1024 * 1024; i++) {
      n = (n * 1103515245 + 12345) % 2 ** 31;
      lines.push(`line ${i} value ${n.toString(36)} ${"abcdefgh".repeat(n % 7)}\n`);
      length += lines[i].length;
    }
    await writeFile(join(big, "data"), lines.join(""));
    return storePathEntriesUnder(join(scratch, "big"), ["/nix/store/11111111111111111111111111111111-big"]);
  };
  const blob = (dir: string, digest: Digest) => join(dir, digest.slice("sha256:".length));

  it("gives the same bytes with 1, 2 or 3 blocks in flight, as members gzip and zstd read back as the tar", async () => {
    const entries = await entriesOfBig();
    const dir = join(scratch, "blocks");
    const store = folderStore(dir);
    const gzip = await Promise.all([1, 2, 3].map((parallelism) => writeLayer(entries, store, { parallelism })));
    expect(gzip[1]).toEqual(gzip[0]);
    expect(gzip[2]).toEqual(gzip[0]);
    const zstd = await Promise.all(
      [1, 2].map((parallelism) => writeLayer(entries, store, { parallelism, compression: "zstd" })),
    );
    expect(zstd[1]).toEqual(zstd[0]);
    // Another blob of the same tar: the diff_id is the tar's, the digest the compressed bytes'.
    expect(zstd[0].diffId).toBe(gzip[0].diffId);
    expect(zstd[0].digest).not.toBe(gzip[0].digest);
    for (const [layer, tool] of [
      [gzip[0], "gzip"],
      [zstd[0], "zstd"],
    ] as const) {
      const tarBytes = execFileSync(tool, ["-dc", blob(dir, layer.digest)], { maxBuffer: 64 * 1024 * 1024 });
      expect(tarBytes.length).toBe(layer.tarSize);
      expect(`sha256:${createHash("sha256").update(tarBytes).digest("hex")}`).toBe(layer.diffId);
    }
    // Four gzip members, each with a fixed header (no time, no name, OS byte 3 whatever the host).
    const compressed = readFileSync(blob(dir, gzip[0].digest));
    const headers = [...compressed.toString("latin1").matchAll(/\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03/g)];
    expect(headers.length).toBeGreaterThanOrEqual(4);
    expect(compressed.subarray(0, 10)).toEqual(Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]));
  });

  it("gives an empty input one empty member, a valid gzip stream", async () => {
    const chunks: Buffer[] = [];
    const compressor = new BlockCompressor({ compression: "gzip", parallelism: 2 });
    compressor.on("data", (chunk: Buffer) => chunks.push(chunk));
    compressor.end();
    await finished(compressor);
    expect(gunzipSync(Buffer.concat(chunks)).length).toBe(0);
  });

  it("cuts blocks at fixed offsets whatever the chunks it is given", async () => {
    const input = Buffer.from(Array.from({ length: 10_000 }, (_, i) => `${i},`).join(""));
    const compress = async (chunkBytes: number, parallelism: number) => {
      const compressor = new BlockCompressor({ compression: "gzip", parallelism, blockBytes: 4096 });
      const out: Buffer[] = [];
      compressor.on("data", (chunk: Buffer) => out.push(chunk));
      for (let i = 0; i < input.length; i += chunkBytes) compressor.write(input.subarray(i, i + chunkBytes));
      compressor.end();
      await finished(compressor);
      return Buffer.concat(out);
    };
    const reference = await compress(4096, 1);
    expect(gunzipSync(reference)).toEqual(input);
    for (const [chunkBytes, parallelism] of [
      [1000, 1],
      [7, 3],
      [50_000, 2],
    ])
      expect(await compress(chunkBytes, parallelism)).toEqual(reference);
  });
});

/** A tree laid out like /nix/store under another root: tests must not write into the real store. */
function storePathEntriesFromRoot(root: string): Promise<TarEntry[]> {
  return storePathEntriesUnder(root, ["/nix/store/00000000000000000000000000000000-demo"]);
}

describe("request signing", () => {
  const secret = "0123456789abcdef0123456789abcdef";

  it("accepts a fresh signature and refuses a wrong secret, another path, another body, or an old one", async () => {
    const now = Date.now();
    const headers = await signRequest(secret, "POST", "/jobs", '{"a":1}', now);
    const given = {
      signature: headers[SIGNATURE_HEADER],
      timestamp: headers[TIMESTAMP_HEADER],
      nonce: headers[NONCE_HEADER],
    };
    const seen = new SeenNonces();
    expect((await verifyRequest("another-secret-0123456789", "POST", "/jobs", '{"a":1}', given, seen, now)).ok).toBe(
      false,
    );
    expect((await verifyRequest(secret, "POST", "/resolve", '{"a":1}', given, seen, now)).ok).toBe(false);
    expect((await verifyRequest(secret, "POST", "/jobs", '{"a":2}', given, seen, now)).ok).toBe(false);
    const old = await verifyRequest(secret, "POST", "/jobs", '{"a":1}', given, seen, now + 5 * 60_000);
    expect(old).toMatchObject({ ok: false, reason: expect.stringMatching(/old/) });
    const unsigned = { signature: undefined, timestamp: undefined, nonce: undefined };
    expect((await verifyRequest(secret, "POST", "/jobs", "", unsigned, seen)).ok).toBe(false);
    // The refusals above took no place in the memory: the request is still accepted, once.
    expect(seen.size).toBe(0);
    expect(await verifyRequest(secret, "POST", "/jobs", '{"a":1}', given, seen, now)).toEqual({ ok: true });
    expect(await verifyRequest(secret, "POST", "/jobs", '{"a":1}', given, seen, now + 1000)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/replayed/),
    });
  });

  it("signs a fresh nonce into every request, and refuses a request without one or with another", async () => {
    const now = Date.now();
    const [first, second] = [
      await signRequest(secret, "GET", "/x", "", now),
      await signRequest(secret, "GET", "/x", "", now),
    ];
    expect(first[NONCE_HEADER]).toMatch(/^[0-9a-f]{32}$/);
    expect(second[NONCE_HEADER]).not.toBe(first[NONCE_HEADER]);
    expect(second[SIGNATURE_HEADER]).not.toBe(first[SIGNATURE_HEADER]);
    const seen = new SeenNonces();
    const given = (h: Record<string, string>) => ({
      signature: h[SIGNATURE_HEADER],
      timestamp: h[TIMESTAMP_HEADER],
      nonce: h[NONCE_HEADER],
    });
    expect(
      await verifyRequest(secret, "GET", "/x", "", { ...given(first), nonce: undefined }, seen, now),
    ).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/no nonce/),
    });
    // The nonce is part of the signed message: a captured request can't be made new by changing it.
    expect(
      await verifyRequest(secret, "GET", "/x", "", { ...given(first), nonce: second[NONCE_HEADER] }, seen, now),
    ).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/does not match/),
    });
    expect((await verifyRequest(secret, "GET", "/x", "", given(first), seen, now)).ok).toBe(true);
    expect((await verifyRequest(secret, "GET", "/x", "", given(second), seen, now)).ok).toBe(true);
  });

  it("remembers nonces until their window closes, and refuses new ones while full rather than forget live ones", () => {
    const seen = new SeenNonces(3);
    const t0 = 1_700_000_000_000;
    const ts = t0 / 1000;
    expect(["a", "b", "c"].map((nonce, i) => seen.admit(nonce, ts + i, t0))).toEqual(["fresh", "fresh", "fresh"]);
    expect(seen.admit("a", ts, t0 + 59_000)).toBe("replayed");
    expect(seen.admit("d", ts, t0 + 1000)).toBe("full");
    expect(seen.secondsUntilRoom(t0 + 1000)).toBe(59);
    // Past a's window (its timestamp + 60 s): forgotten, and d takes its place.
    expect(seen.admit("d", ts + 61, t0 + 61_000)).toBe("fresh");
    expect(seen.size).toBe(3);
    expect(seen.admit("b", ts + 1, t0 + 61_000)).toBe("replayed");
    expect(seen.admit("e", ts + 200, t0 + 200_000)).toBe("fresh");
    expect(seen.size).toBe(1); // b, c and d (until ts + 121) are gone
  });
});

describe("names, tags, digests and ranges", () => {
  it("expands meta-packages, sorts and deduplicates", () => {
    expect(parseImageName("hello/git")).toEqual(parseImageName("git/hello"));
    expect(parseImageName("shell/hello/coreutils")).toEqual({
      ok: true,
      image: {
        packages: ["bashInteractive", "coreutils", "hello", "moreutils", "nano"],
        system: "x86_64-linux",
        compression: "gzip",
      },
    });
    // Components are lower case; the meta-package's bashInteractive is the same package, in either order.
    expect(parseImageName("shell/bashinteractive")).toEqual(parseImageName("shell"));
    expect(parseImageName("bashinteractive/shell")).toEqual(parseImageName("shell"));
    expect(parseImageName("arm64/hello")).toEqual({
      ok: true,
      image: { packages: ["hello"], system: "aarch64-linux", compression: "gzip" },
    });
    // zstd first is a meta-package too: layers compressed with zstd. Elsewhere, or alone, it is the zstd program.
    expect(parseImageName("zstd/hello/arm64")).toEqual({
      ok: true,
      image: { packages: ["hello"], system: "aarch64-linux", compression: "zstd" },
    });
    expect(parseImageName("shell/zstd")).toEqual({
      ok: true,
      image: {
        packages: ["bashInteractive", "coreutils", "moreutils", "nano", "zstd"],
        system: "x86_64-linux",
        compression: "gzip",
      },
    });
    expect(parseImageName("zstd")).toEqual({
      ok: true,
      image: { packages: ["zstd"], system: "x86_64-linux", compression: "gzip" },
    });
    expect(parseImageName("zstd/zstd")).toEqual({
      ok: true,
      image: { packages: ["zstd"], system: "x86_64-linux", compression: "zstd" },
    });
    expect(parseImageName("Hello").ok).toBe(false);
    expect(parseImageName("a//b").ok).toBe(false);
    expect(parseImageName("arm64").ok).toBe(false);
  });

  it("refuses names, images and tags over their limits, naming the limit and the size", () => {
    const packages = (n: number) => Array.from({ length: n }, (_, i) => `p${i + 1}`);
    expect(parseImageName(packages(64).join("/")).ok).toBe(true);
    expect(parseImageName(packages(65).join("/"))).toEqual({
      ok: false,
      reason: "an image holds at most 64 packages; this name asks for 65",
    });
    // Counted as the builder will get them: meta-packages expanded, duplicates and the system switch left out.
    expect(parseImageName(["arm64", "shell", ...packages(60), "p1"].join("/")).ok).toBe(true);
    expect(parseImageName(["shell", ...packages(61)].join("/"))).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/asks for 65/),
    });
    expect(parseImageName("a".repeat(256))).toEqual({
      ok: false,
      reason: "repository names are at most 255 characters; this one has 256",
    });
    expect(tagProblem("t".repeat(128))).toBeNull();
    expect(tagProblem("t".repeat(129))).toBe("tags are at most 128 characters; this one has 129");
    expect(tagProblem(".x")).toMatch(/not a tag/);
    // The builder holds the same limit, so a request that skipped the worker's check is refused too.
    const build = { system: "x86_64-linux", tag: "latest", revision: "abc" };
    expect(validateBuildRequest({ ...build, packages: packages(64) }).ok).toBe(true);
    expect(validateBuildRequest({ ...build, packages: packages(65) })).toEqual({
      ok: false,
      reason: "an image holds 1 to 64 packages, not 65",
    });
  });

  it("classifies tags", () => {
    expect(classifyTag("latest")).toEqual({ kind: "latest" });
    expect(classifyTag("a".repeat(40))).toEqual({ kind: "commit", commit: "a".repeat(40) });
    expect(classifyTag("nixos-24.05")).toEqual({ kind: "ref", ref: "nixos-24.05" });
    expect(classifyTag("-bad")).toBeNull();
    expect(classifyTag("x".repeat(129))).toBeNull();
  });

  it("checks digests", () => {
    expect(parseDigest(`sha256:${"a".repeat(64)}`).ok).toBe(true);
    expect(parseDigest("sha256:totallywrong").ok).toBe(false);
    expect(parseDigest(`md5:${"a".repeat(32)}`)).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/not supported/),
    });
  });

  it("parses ranges the way RFC 9110 says", () => {
    const served = (header: string | null, size: number) => {
      const spec = parseRange(header);
      if (spec.kind === "from" || spec.kind === "suffix") return satisfyRange(spec, size);
      return spec.kind;
    };
    expect(served("bytes=0-9", 100)).toEqual({ start: 0, end: 9 });
    expect(served("bytes=90-", 100)).toEqual({ start: 90, end: 99 });
    expect(served("bytes=-10", 100)).toEqual({ start: 90, end: 99 });
    expect(served("bytes=-500", 100)).toEqual({ start: 0, end: 99 });
    expect(served("bytes=50-500", 100)).toEqual({ start: 50, end: 99 });
    expect(served("bytes=100-", 100)).toBeNull();
    expect(served("bytes=5-3", 100)).toBe("invalid");
    expect(served("bytes=0-1,5-6", 100)).toBe("multiple");
    expect(served("items=0-1", 100)).toBe("none");
    expect(served(null, 100)).toBe("none");
  });

  it("the builder re-checks build requests", () => {
    expect(
      validateBuildRequest({ packages: ["hello", "a.b"], system: "x86_64-linux", tag: "latest", revision: "abc" }).ok,
    ).toBe(true);
    expect(
      validateBuildRequest({ packages: ['x"; builtins.exec'], system: "x86_64-linux", tag: "latest", revision: "abc" })
        .ok,
    ).toBe(false);
    expect(validateBuildRequest({ packages: ["hello"], system: "riscv", tag: "latest", revision: "abc" }).ok).toBe(
      false,
    );
    expect(validateBuildRequest({ packages: [], system: "x86_64-linux", tag: "latest", revision: "abc" }).ok).toBe(
      false,
    );
  });

  it("says what is wrong with a request first, in the order the fields are checked, a missing field included", () => {
    const build = { packages: ["hello"], system: "x86_64-linux", tag: "latest", revision: "abc" };
    const reason = (value: unknown) => {
      const check = validateJobRequest(value);
      return check.ok ? null : check.reason;
    };
    expect(reason(null)).toBe("the build request is not a JSON object");
    expect(reason("hello")).toBe("the build request is not a JSON object");
    expect(reason([])).toBe("an image holds 1 to 64 packages, not none");
    expect(reason({ ...build, packages: "hello" })).toBe("an image holds 1 to 64 packages, not none");
    // The count before the names: 65 names that are not attribute paths are refused for being 65.
    expect(reason({ ...build, packages: Array(65).fill(7) })).toBe("an image holds 1 to 64 packages, not 65");
    expect(reason({ ...build, packages: ["hello", { a: 1 }] })).toBe(
      '"[object Object]" is not a package attribute path',
    );
    expect(reason({ ...build, packages: ["a".repeat(256)] })).toBe(
      `"${"a".repeat(256)}" is not a package attribute path`,
    );
    expect(reason({ ...build, system: undefined })).toBe("system must be one of x86_64-linux, aarch64-linux");
    expect(reason({ packages: ["hello"], system: "x86_64-linux", revision: "abc" })).toBe(
      "the build request needs a tag and the revision it resolved to",
    );
    expect(reason({ ...build, revision: "ABC" })).toBe("the build request needs a tag and the revision it resolved to");
    expect(reason({ ...build, jobId: "j", waitSeconds: 11 })).toBe("waitSeconds is a number of seconds from 0 to 10");
    expect(reason({ ...build, jobId: "j", waitSeconds: null })).toBe("waitSeconds is a number of seconds from 0 to 10");
    expect(validateJobRequest({ ...build, jobId: "j", waitSeconds: 10, extra: 1 })).toEqual({
      ok: true,
      request: { ...build, compression: "gzip", jobId: "j", waitSeconds: 10 },
    });
    expect(reason({ ...build, compression: "xz" })).toBe("compression must be one of gzip, zstd");
  });

  it("the builder re-checks job requests: a build request plus a job id of letters, digits and dashes", () => {
    const build = { packages: ["hello", "a.b", "hello"], system: "x86_64-linux", tag: "latest", revision: "abc" };
    const jobId = randomUUID();
    expect(validateJobRequest({ ...build, jobId })).toEqual({
      ok: true,
      request: {
        packages: ["a.b", "hello"],
        system: "x86_64-linux",
        compression: "gzip",
        tag: "latest",
        revision: "abc",
        jobId,
      },
    });
    expect(validateJobRequest(build)).toMatchObject({ ok: false, reason: expect.stringMatching(/jobId/) });
    expect(validateJobRequest({ ...build, jobId: "../../etc" }).ok).toBe(false);
    expect(validateJobRequest({ ...build, jobId: "x".repeat(65) }).ok).toBe(false);
    expect(validateJobRequest({ ...build, jobId: 7 }).ok).toBe(false);
    // The build request's own checks come first.
    expect(validateJobRequest({ ...build, packages: ['x"; builtins.exec'], jobId }).ok).toBe(false);
  });
});

describe("the builder's Nix settings", () => {
  it("turns the named variables into NIX_CONFIG lines, with an inherited NIX_CONFIG last so it still wins", () => {
    const problems: string[] = [];
    const settings = readNixSettings(
      {
        NIX_EXTRA_SUBSTITUTERS: "https://cache.example.com",
        NIX_EXTRA_TRUSTED_PUBLIC_KEYS: "cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        NIX_MAX_JOBS: "0",
        NIX_TIMEOUT: "120",
      },
      problems,
    );
    expect(problems).toEqual([]);
    if (!settings) throw new Error("no settings");
    expect(settings.timeoutSeconds).toBe(120);
    expect(nixConfig(settings, "sandbox = true").split("\n")).toEqual([
      "max-jobs = 0",
      "cores = 0",
      "extra-substituters = https://cache.example.com",
      "extra-trusted-public-keys = cache.example.com-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
      "sandbox = true",
    ]);
    const none = readNixSettings({ NIX_SUBSTITUTERS: "none" }, []);
    if (!none) throw new Error("no settings");
    expect(nixConfig(none, undefined).split("\n")).toContain("substituters = ");
  });

  it("names each variable whose value is wrong, and keeps NIX_TIMEOUT_SECONDS as NIX_TIMEOUT's old name", () => {
    const problems: string[] = [];
    const settings = readNixSettings(
      {
        NIX_SUBSTITUTERS: "cache.nixos.org",
        NIX_TRUSTED_PUBLIC_KEYS: "garbage",
        NIX_MAX_JOBS: "many",
        NIX_CORES: "-1",
        NIX_TIMEOUT_SECONDS: "30",
      },
      problems,
    );
    expect(problems.map((p) => p.split(/[:=]/)[0])).toEqual([
      "NIX_SUBSTITUTERS",
      "NIX_TRUSTED_PUBLIC_KEYS",
      "NIX_MAX_JOBS",
      "NIX_CORES",
    ]);
    // With a problem there are no settings to start with; the old name alone is read as NIX_TIMEOUT.
    expect(settings).toBeNull();
    expect(readNixSettings({ NIX_TIMEOUT_SECONDS: "30" }, [])?.timeoutSeconds).toBe(30);
    const clash: string[] = [];
    readNixSettings({ NIX_TIMEOUT: "60", NIX_TIMEOUT_SECONDS: "30" }, clash);
    expect(clash[0]).toContain("NIX_TIMEOUT=60 and NIX_TIMEOUT_SECONDS=30 disagree");
  });

  it("reports a setting Nix itself refuses by the variable that set it, or NIX_CONFIG for its own lines", async () => {
    const refused = probeNix({ ...process.env, NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nmax-jobs = lots` });
    await expect(refused).rejects.toThrow(/^NIX_MAX_JOBS: Nix refused its value: .*max-jobs/);
    const unknown = probeNix({ ...process.env, NIX_CONFIG: `${OFFLINE_NIX_CONFIG}\nfrobnicate = 1` });
    await expect(unknown).rejects.toThrow(/^NIX_CONFIG: Nix does not know the setting 'frobnicate'/);
    expect((await probeNix({ ...process.env, NIX_CONFIG: OFFLINE_NIX_CONFIG })).version).toMatch(/^2\.\d+/);
  });

  it("reads the message a package set throws, from Nix 2.8's one line and from a newer Nix's trace", () => {
    expect(
      thrownMessage(
        "error: 'x' has been renamed to/replaced by 'y'\n(use '--show-trace' to show detailed location information)\n",
      ),
    ).toBe("'x' has been renamed to/replaced by 'y'");
    const trace = [
      "error:",
      "       … while evaluating the attribute 'drvPath'",
      "         at /nix/store/...-source/build-image.nix:190:29:",
      "       … while calling the 'throw' builtin",
      "       error: 'x' has been removed: use",
      "       'z' instead",
    ].join("\n");
    expect(thrownMessage(trace)).toBe("'x' has been removed: use 'z' instead");
  });
});

describe("time limits on the builder's child processes and requests", () => {
  const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };
  /** Pids of live processes whose command line contains `text` (zombies have none, so they don't count). */
  function processesMentioning(text: string): number[] {
    const pids = execFileSync("ps", ["-e", "-o", "pid=,stat=,args="], { encoding: "utf8" })
      .split("\n")
      .filter((line) => line.includes(text) && !/^\s*\d+\s+Z/.test(line))
      .map((line) => Number(line.trim().split(/\s+/)[0]));
    return pids.filter((pid) => pid !== process.pid);
  }

  it("stops a pipeline at its limit, the grandchildren holding its pipes included, and says what and which limit", async () => {
    // A duration no other process here sleeps for, to find these by.
    const marker = `sleep 30.${Date.now()}${process.pid}`;
    const started = performance.now();
    // The first stage leaves a child behind that holds the pipe: a plain timeout on the shell would wait for it.
    const run = runPipeline(["sh", ["-c", `${marker} & ${marker}`]], ["cat", []], {
      label: "sh | cat",
      timeoutMs: 300,
    });
    await expect(run).rejects.toThrow(CommandTimeoutError);
    await expect(run).rejects.toThrow("sh | cat took longer than its time limit of 0.3 s and was stopped");
    expect(performance.now() - started).toBeLessThan(2000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(processesMentioning(marker)).toEqual([]);
  });

  it("a git clone from a host that never answers is stopped at its limit with git's helpers, naming the limit", async () => {
    // Accepts connections and says nothing, like a host behind a broken proxy.
    const sockets = new Set<Socket>();
    const silent = createTcpServer((socket) => sockets.add(socket.on("error", () => undefined)));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/pkgs-${randomUUID()}.git`;
    try {
      const source = new GitRepoSource({
        url,
        branch: null,
        dataDir: join(scratch, "git-timeout"),
        ttlSeconds: 60,
        log: quiet,
        fetchTimeoutSeconds: 0.1,
      });
      const started = performance.now();
      // The first clone gets ten fetches' time: 1 s here.
      await expect(source.init()).rejects.toThrow(
        `cannot clone NIXERY_PKGS_REPO=${url}: git clone took longer than its time limit of 1 s and was stopped`,
      );
      expect(performance.now() - started).toBeLessThan(3000);
      expect(sockets.size).toBeGreaterThan(0); // git did reach the host, and waited on it
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(processesMentioning(url)).toEqual([]); // git and git-remote-http
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it("a channel service that never answers, or stalls in its answer, is given up on at the limit, saying so", async () => {
    const stalled = createHttpServer((request, response) => {
      if (request.url === "/nixos-headers-only/git-revision") {
        response.writeHead(200, { "content-type": "text/plain" });
        response.write("0123456789");
      }
      // Otherwise no answer at all.
    });
    await new Promise<void>((resolve) => stalled.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(stalled.address() as AddressInfo).port}`;
    try {
      const source = new ChannelSource({
        defaultChannel: "nixos-test",
        channelsUrl: base,
        archiveUrl: `${base}/archive`,
        ttlSeconds: 60,
        requestTimeoutMs: 250,
      });
      for (const channel of ["nixos-silent", "nixos-headers-only"]) {
        const started = performance.now();
        await expect(source.resolve(channel)).rejects.toThrow(
          `the channel service at ${base}/${channel}/git-revision did not answer within its time limit of 0.25 s`,
        );
        expect(performance.now() - started).toBeLessThan(2000);
      }
    } finally {
      stalled.closeAllConnections();
      stalled.close();
    }
  });
});
