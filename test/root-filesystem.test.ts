// The root filesystem the builder makes from an image's top-level store paths (builder-service/root-filesystem.ts),
// on fake store paths in a scratch folder, and the reading of build-image.nix's output (closure.ts).
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseImageClosure } from "../builder-service/closure.ts";
import { rootFilesystem, type RootfsEntry } from "../builder-service/root-filesystem.ts";

const scratch = await mkdtemp(join(tmpdir(), "rootfs-"));
afterAll(() => rm(scratch, { recursive: true, force: true }));

/** A fake store path: files (content), symlinks ("-> target") and empty folders ("/") under it. */
async function storePath(name: string, tree: Record<string, string>): Promise<string> {
  const root = join(scratch, name);
  await mkdir(root, { recursive: true });
  for (const [path, content] of Object.entries(tree)) {
    const full = join(root, path);
    if (content === "/") {
      await mkdir(full, { recursive: true });
      continue;
    }
    await mkdir(join(full, ".."), { recursive: true });
    if (content.startsWith("-> ")) await symlink(content.slice(3), full);
    else await writeFile(full, content);
  }
  return root;
}

const closure = (topLevel: string[], resolved: Record<string, string> = {}, packages: Record<string, string> = {}) => ({
  topLevel,
  resolved,
  packages,
});

const byPath = (entries: RootfsEntry[]) => Object.fromEntries(entries.map(({ path, ...rest }) => [path, rest]));

describe("rootFilesystem", () => {
  it("links every file of the top-level paths, earlier paths winning, with /tmp first", async () => {
    const a = await storePath("a", { "bin/x": "a", "share/dir/file": "f", "nix-support/setup-hook": "s" });
    const b = await storePath("b", { "bin/x": "b", "bin/y": "b", "share/dir/other": "o", "nix-support/p": "p" });
    const { entries, leftOut } = await rootFilesystem(closure([a, b]));
    expect(entries).toEqual([
      { path: "/bin", type: "directory" },
      { path: "/bin/x", type: "symlink", target: `${a}/bin/x` },
      { path: "/bin/y", type: "symlink", target: `${b}/bin/y` },
      { path: "/share", type: "directory" },
      { path: "/share/dir", type: "directory" },
      { path: "/share/dir/file", type: "symlink", target: `${a}/share/dir/file` },
      { path: "/share/dir/other", type: "symlink", target: `${b}/share/dir/other` },
      { path: "/tmp", type: "directory", mode: "1777" },
    ]);
    expect(leftOut).toEqual([]);
  });

  it("puts nothing under a path an earlier store path made a symlink or a file, and links symlinks themselves", async () => {
    const a = await storePath("hides", { lib: "-> /nowhere", "deep/x/y/rel": "-> ../../../bin/x", "bin/x": "x" });
    const b = await storePath("hidden", {
      "lib/sub/f": "f",
      "deep/x": "a file where a has a folder",
      "sbin/tool": "t",
    });
    const found = byPath((await rootFilesystem(closure([a, b]))).entries);
    expect(found["/lib"]).toEqual({ type: "symlink", target: `${a}/lib` });
    expect(found["/lib/sub"]).toBeUndefined();
    expect(found["/deep/x"]).toEqual({ type: "directory" });
    expect(found["/deep/x/y/rel"]).toEqual({ type: "symlink", target: `${a}/deep/x/y/rel` });
    expect(found["/sbin/tool"]).toEqual({ type: "symlink", target: `${b}/sbin/tool` });
  });

  it("takes /usr/bin/env from the package resolved to coreutils, else from the first top-level path with bin/env", async () => {
    const first = await storePath("first-env", { "bin/env": "e" });
    const coreutils = await storePath("coreutils", { "bin/env": "-> /nowhere", "bin/ls": "l" });
    const withCoreutils = byPath(
      (await rootFilesystem(closure([first, coreutils], { Coreutils: "coreutils" }, { Coreutils: coreutils }))).entries,
    );
    expect(withCoreutils["/usr"]).toEqual({ type: "directory" });
    expect(withCoreutils["/usr/bin"]).toEqual({ type: "directory" });
    expect(withCoreutils["/usr/bin/env"]).toEqual({ type: "symlink", target: `${coreutils}/bin/env` });
    // bin/env itself still comes from the first path.
    expect(withCoreutils["/bin/env"]).toEqual({ type: "symlink", target: `${first}/bin/env` });
    const without = byPath((await rootFilesystem(closure([first, coreutils]))).entries);
    expect(without["/usr/bin/env"]).toEqual({ type: "symlink", target: `${first}/bin/env` });
    const none = byPath((await rootFilesystem(closure([await storePath("no-env", { "bin/ls": "l" })]))).entries);
    expect(none["/usr"]).toBeUndefined();
  });

  it("keeps /tmp and /usr/bin/env over a package's own, and adds nothing for a top-level path that is not a folder", async () => {
    const env = await storePath("env-first", { "bin/env": "e" });
    const clash = await storePath("clash", { "tmp/x/f": "t", "usr/bin/env": "e", "usr/bin/other": "o" });
    const file = join(scratch, "single-file");
    await writeFile(file, "single");
    const linked = join(scratch, "linked-folder");
    await symlink(clash, linked);
    const found = byPath((await rootFilesystem(closure([env, file, linked, clash]))).entries);
    expect(found["/tmp"]).toEqual({ type: "directory", mode: "1777" });
    expect(found["/tmp/x"]).toEqual({ type: "directory" });
    expect(found["/usr/bin/env"]).toEqual({ type: "symlink", target: `${env}/bin/env` });
    expect(found["/usr/bin/other"]).toEqual({ type: "symlink", target: `${clash}/usr/bin/other` });
    expect(Object.values(found).some((entry) => "target" in entry && entry.target.startsWith(`${linked}/`))).toBe(
      false,
    );
    expect(Object.values(found).some((entry) => "target" in entry && entry.target.startsWith(file))).toBe(false);
  });

  it("leaves out names holding a newline, with what is under them, and sorts by the names' bytes", async () => {
    const odd = await storePath("odd", {
      "share/weird\nname": "n",
      "share/dir\nnl/inside": "i",
      "share/tab\tname": "t",
      "share/\u00fcber": "u",
      "share/\u{1F600}": "e",
      "share/\uFF21": "w",
    });
    const { entries, leftOut } = await rootFilesystem(closure([odd]));
    expect(leftOut.sort()).toEqual([`${odd}/share/dir\nnl`, `${odd}/share/weird\nname`]);
    // UTF-8 byte order: U+FF21 (EF BC A1) before U+1F600 (F0 9F 98 80), unlike UTF-16's.
    expect(entries.map((entry) => entry.path)).toEqual([
      "/share",
      "/share/tab\tname",
      "/share/\u00fcber",
      "/share/\uFF21",
      "/share/\u{1F600}",
      "/tmp",
    ]);
  });
});

describe("parseImageClosure", () => {
  const metadata = {
    mainProgram: null,
    packages: { hello: "/nix/store/aaaa-hello" },
    resolved: { hello: "hello" },
    system: "x86_64-linux",
    topLevel: ["/nix/store/aaaa-hello"],
    version: 3,
  };
  const graph = [{ closureSize: 10, narHash: "sha256:0", narSize: 10, path: "/nix/store/aaaa-hello", references: [] }];

  it("reads the graph and the metadata, ignoring Nix's own attributes", () => {
    const text = JSON.stringify({
      builder: "/nix/store/bbbb-busybox/bin/busybox",
      graph,
      metadata,
      name: "image-metadata",
    });
    expect(parseImageClosure(text)).toEqual({
      packages: metadata.packages,
      resolved: metadata.resolved,
      topLevel: metadata.topLevel,
      graph,
      mainProgram: null,
    });
  });

  it("refuses another format version or shape", () => {
    expect(() => parseImageClosure(JSON.stringify({ graph, metadata: { ...metadata, version: 2 } }))).toThrow(
      /metadata version 3/,
    );
    expect(() => parseImageClosure(JSON.stringify({ graph: [{ path: 1 }], metadata }))).toThrow(/metadata version 3/);
    expect(() => parseImageClosure(JSON.stringify({ metadata }))).toThrow(/metadata version 3/);
  });
});
