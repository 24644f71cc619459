#!/usr/bin/env node
// Self-check of nix/build-image.nix against package-sets/test-pkgs: `node package-sets/check.mjs` (needs nix-bin
// and busybox-static; root for the chroot part, which is skipped otherwise). Exits non-zero on failure.
// It checks the contract documented in nix/README.md with real Nix runs, and prints timings.
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { tsImport } from "tsx/esm/api";

// The builder's own reading of the image's output, and its root filesystem (TypeScript, loaded through tsx).
const { parseImageClosure } = await tsImport("../builder-service/closure.ts", import.meta.url);
const { rootFilesystem } = await tsImport("../builder-service/root-filesystem.ts", import.meta.url);

const here = dirname(fileURLToPath(import.meta.url));
const expr = join(here, "../nix/build-image.nix");
const source = JSON.stringify({ kind: "path", path: resolve(here, "test-pkgs") });
// Root without the nixbld group (Debian's nix-bin alone) builds as root, as a single-user Nix does.
const singleUserRoot =
  process.getuid?.() === 0 && !/^nixbld:/m.test(existsSync("/etc/group") ? readFileSync("/etc/group", "utf8") : "");
const env = {
  ...process.env,
  NIX_CONFIG: `substituters =\nexperimental-features = nix-command${singleUserRoot ? "\nbuild-users-group =" : ""}`,
};
const system = execFileSync("nix-instantiate", ["--eval", "--json", "-E", "builtins.currentSystem"], {
  env,
  encoding: "utf8",
})
  .trim()
  .replace(/"/g, "");

let failures = 0;
function check(ok, what) {
  if (ok) console.log(`ok    ${what}`);
  else {
    failures++;
    console.log(`FAIL  ${what}`);
  }
}

/** build-image.nix's arguments for one attribute of one image. */
function exprArgs(attr, packages, sys = system) {
  return [
    expr,
    "-A",
    attr,
    "--argstr",
    "packages",
    JSON.stringify(packages),
    "--argstr",
    "source",
    source,
    "--argstr",
    "system",
    sys,
  ];
}

function nix(cmd, attr, packages, sys = system) {
  const args = exprArgs(attr, packages, sys);
  const full =
    cmd === "resolve"
      ? ["nix-instantiate", ["--eval", "--strict", "--json", ...args]]
      : ["nix-build", ["--no-out-link", ...args]];
  const t0 = process.hrtime.bigint();
  const r = spawnSync(full[0], full[1], { env, encoding: "utf8", maxBuffer: 1 << 28 });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, seconds };
}

// ---- resolve ----------------------------------------------------------------------------------
{
  const names = [
    "hello",
    "tools.greet",
    "bashinteractive",
    "2048",
    "nosuchpkg",
    "tools.nope",
    "hello-old",
    "lib",
    "tools",
  ];
  const r = nix("resolve", "resolve", names);
  check(r.status === 0, `resolve exits 0 (${r.seconds.toFixed(3)} s)`);
  const got = JSON.parse(r.stdout);
  // Nix prints attributes sorted by name.
  const want = {
    refused: {},
    resolved: { 2048: "_2048", bashinteractive: "bashInteractive", hello: "hello", "tools.greet": "tools.greet" },
    throws: ["hello-old"],
    unknown: ["lib", "nosuchpkg", "tools", "tools.nope"],
  };
  check(JSON.stringify(got) === JSON.stringify(want), `resolve answers ${r.stdout.trim()}`);
}

// ---- images -----------------------------------------------------------------------------------
const cmp = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));

function closureOf(paths) {
  return new Set(
    execFileSync("nix-store", ["-qR", ...paths], { env, encoding: "utf8" })
      .trim()
      .split("\n"),
  );
}

async function checkImage(packages, runs) {
  const r = nix("build", "image", packages);
  check(r.status === 0, `image ${JSON.stringify(packages)} builds (${r.seconds.toFixed(3)} s)`);
  if (r.status !== 0) {
    console.log(r.stderr);
    return;
  }
  const out = r.stdout.trim();
  const again = nix("build", "image", packages);
  check(again.stdout.trim() === out, `  same output path when built again (${again.seconds.toFixed(3)} s)`);
  const rebuilt = spawnSync("nix-build", ["--check", "--no-out-link", ...exprArgs("image", packages)], {
    env,
    encoding: "utf8",
  });
  check(rebuilt.status === 0, "  nix-build --check: a rebuild gives the same bytes");

  const text = readFileSync(join(out, "image.json"), "utf8");
  const image = parseImageClosure(text);
  const expectedKeys = [...new Set([...packages, "cacert", "iana-etc"])].sort();
  check(
    JSON.stringify(Object.keys(image.packages).sort()) === JSON.stringify(expectedKeys),
    "  packages: every requested name, cacert and iana-etc",
  );
  check(JSON.parse(text).metadata.system === system, `  system is ${system}`);
  const wantTop = [
    ...new Set([
      ...[...packages].sort().map((n) => image.packages[n]),
      image.packages.cacert,
      image.packages["iana-etc"],
    ]),
  ];
  check(
    JSON.stringify(image.topLevel) === JSON.stringify(wantTop),
    "  topLevel: requested names sorted, then cacert, iana-etc",
  );
  const graphPaths = new Set(image.graph.map((e) => e.path));
  const closure = closureOf(image.topLevel);
  check(
    graphPaths.size === closure.size && [...closure].every((p) => graphPaths.has(p)),
    `  graph holds exactly the closure (${closure.size} paths)`,
  );
  check(
    image.graph.every(
      (e) => e.references.every((p) => graphPaths.has(p)) && e.narSize > 0 && e.closureSize >= e.narSize,
    ),
    "  graph: references inside the graph, sizes set",
  );

  const { entries: rootfs } = await rootFilesystem(image);
  const paths = rootfs.map((e) => e.path);
  check(
    paths.every((p, i) => i === 0 || cmp(paths[i - 1], p) < 0),
    `  root filesystem sorted bytewise, no duplicates (${rootfs.length} entries)`,
  );
  const kinds = new Map(rootfs.map((e) => [e.path, e.type]));
  check(
    rootfs.every((e) => {
      const parent = e.path.slice(0, e.path.lastIndexOf("/"));
      return parent === "" || kinds.get(parent) === "directory";
    }),
    "  every parent is a directory entry",
  );
  check(
    rootfs
      .filter((e) => e.type === "symlink")
      .every((e) => existsSync(e.target) && image.topLevel.some((t) => e.target.startsWith(t + "/"))),
    "  every symlink resolves to a file of a top-level path",
  );
  check(
    kinds.get("/tmp") === "directory" && rootfs.find((e) => e.path === "/tmp").mode === "1777",
    "  /tmp with mode 1777",
  );
  if (image.packages.coreutils) {
    const env = rootfs.find((e) => e.path === "/usr/bin/env");
    check(env?.target === `${image.packages.coreutils}/bin/env`, "  /usr/bin/env points into coreutils");
  }
  if (runs && process.getuid?.() === 0) runInChroot(image, rootfs, runs);
}

// Materialise the image (closure copied into ROOT/nix/store, the root filesystem laid out) and run in it.
const chrootBin = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"].find((p) => existsSync(p));
function runInChroot(image, rootfs, runs) {
  if (!chrootBin) {
    console.log("skip  chroot runs (no chroot binary)");
    return;
  }
  const root = mkdtempSync(join(tmpdir(), "image-check-"));
  try {
    mkdirSync(join(root, "nix/store"), { recursive: true });
    for (const e of image.graph) cpSync(e.path, join(root, e.path), { recursive: true, verbatimSymlinks: true });
    for (const e of rootfs) {
      if (e.type === "directory") mkdirSync(join(root, e.path), { recursive: true });
      else symlinkSync(e.target, join(root, e.path));
    }
    for (const [argv, want] of runs) {
      // PATH is the image's; chroot itself is found on ours.
      const r = spawnSync(chrootBin, [root, ...argv], { encoding: "utf8", env: { PATH: "/bin:/usr/bin" } });
      check(
        r.status === 0 && r.stdout === want,
        `  chroot: ${argv.join(" ")} -> ${JSON.stringify(r.stdout)}${r.stderr ? ` (stderr ${JSON.stringify(r.stderr)})` : ""}`,
      );
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await checkImage(["hello"], [[["/bin/hello"], "Hello, world!\n"]]);
await checkImage(["greeting", "dataset"], [[["/bin/greeting", "tests"], "HELLO, WORLD!\nand greetings to tests\n"]]);
await checkImage(
  ["bashInteractive", "coreutils", "moreutils", "nano", "hello"],
  [
    [["/bin/bash", "-c", "hello"], "Hello, world!\n"],
    [["/usr/bin/env", "sh", "-c", "echo one two | wc -w"], "2\n"],
    [["/bin/sh", "-c", "printf 'b\\na\\n' | sort | sponge"], "a\nb\n"],
  ],
);
await checkImage(
  ["tools.greet", "2048", "bashinteractive", "busybox", "coreutils"],
  [
    [
      ["/bin/bash", "-c", "greet && 2048"],
      "greetings from tools.greet\n2048: join the numbers and get to the 2048 tile!\n",
    ],
  ],
);

// ---- failures ---------------------------------------------------------------------------------
{
  const r = nix("build", "image", ["broken", "hello"]);
  check(r.status === 100, `a failing package: nix-build exits 100 (got ${r.status})`);
  check(
    r.stderr.includes("error: this package is broken on purpose (test fixture)") &&
      r.stderr.includes("compiling broken-1.0...") &&
      /builder for '[^']*-broken-1\.0\.drv' failed/.test(r.stderr),
    "  its log and derivation name are on stderr",
  );
}
{
  const r = nix("build", "image", ["hello", "nosuch", "zzz"]);
  check(
    r.status === 1 && r.stderr.includes("unknown packages: nosuch, zzz"),
    "unknown names: image fails to evaluate, naming them",
  );
}

{
  // The image's derivation is built with the package set's own busybox; the host's is never used.
  const dir = mkdtempSync(join(tmpdir(), "no-busybox-"));
  writeFileSync(
    join(dir, "default.nix"),
    `args: removeAttrs (import ${resolve(here, "test-pkgs")} args) [ "busybox" ]`,
  );
  const r = spawnSync(
    "nix-instantiate",
    [
      expr,
      "-A",
      "image",
      "--argstr",
      "packages",
      '["hello"]',
      "--argstr",
      "source",
      JSON.stringify({ kind: "path", path: dir }),
    ],
    { env, encoding: "utf8" },
  );
  check(
    r.status === 1 && r.stderr.includes("the package set has no busybox"),
    "a package set without busybox: image fails to evaluate, saying so",
  );
  rmSync(dir, { recursive: true, force: true });
}

console.log(failures === 0 ? "all checks passed" : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
