#!/usr/bin/env node
// Self-check of the Debian package set with real Nix runs, the way the builder uses it:
//
//   node package-sets/debian-pkgs/check.mjs [SETDIR] [--no-generate] [--keep]
//
// 1. Generates the set into SETDIR (default package-sets/debian-pkgs/generated/; --no-generate uses it as is).
// 2. For a few images (curl; shell/git; python3; bash/jq; busybox; perl/openssl): builds
//    nix/build-image.nix's `image` from SETDIR, makes the image's root filesystem like the image
//    layers would (every store path of image.json's graph under ROOT/nix/store, the builder's root
//    filesystem's directories and symlinks, plus /dev/null), and runs commands in it with chroot (needs root).
// 3. Checks the set's failures: aarch64-linux and a missing packages.json fail with clear messages.
// 4. Rebuilds a few packages with `nix-build --check` (deterministic builds).
// Prints closure sizes (sum of narSize) and store-path counts. Exit code 1 if anything failed.
// Needs: root, nix-bin, and the packages of apt-packages.txt.

import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { tsImport } from "tsx/esm/api";

// The builder's own reading of the image's output, and its root filesystem (TypeScript, loaded through tsx).
const { parseImageClosure } = await tsImport("../../builder-service/closure.ts", import.meta.url);
const { rootFilesystem } = await tsImport("../../builder-service/root-filesystem.ts", import.meta.url);

const HERE = path.dirname(fileURLToPath(import.meta.url));
const NIX_DIR = path.join(HERE, "../../nix");
const args = process.argv.slice(2);
const keep = args.includes("--keep");
const noGenerate = args.includes("--no-generate");
const setDir = path.resolve(args.find((a) => !a.startsWith("--")) || path.join(HERE, "generated"));
// Root without the nixbld group (Debian's nix-bin alone) builds as root, as a single-user Nix does.
const singleUserRoot =
  process.getuid?.() === 0 &&
  !/^nixbld:/m.test(fs.existsSync("/etc/group") ? fs.readFileSync("/etc/group", "utf8") : "");
const env = {
  ...process.env,
  NIX_CONFIG: `substituters =\nexperimental-features = nix-command${singleUserRoot ? "\nbuild-users-group =" : ""}`,
};

let failures = 0;
const ok = (msg) => console.log(`ok    ${msg}`);
const fail = (msg) => {
  failures++;
  console.log(`FAIL  ${msg}`);
};
const seconds = (t) => `${(Number(process.hrtime.bigint() - t) / 1e9).toFixed(2)} s`;

if (process.getuid && process.getuid() !== 0) {
  console.error("check.mjs: needs root (chroot, mknod)");
  process.exit(2);
}

if (!noGenerate) {
  const t = process.hrtime.bigint();
  execFileSync(process.execPath, [path.join(HERE, "generate.mjs"), setDir, "--quiet"], { stdio: "inherit" });
  ok(`generated ${setDir} in ${seconds(t)}`);
}

function nix(cmd, argv) {
  return spawnSync(cmd, argv, { env, encoding: "utf8", maxBuffer: 1 << 26 });
}
const source = JSON.stringify({ kind: "path", path: setDir });
function buildImage(packages, system = "x86_64-linux") {
  return nix("nix-build", [
    "--no-out-link",
    path.join(NIX_DIR, "build-image.nix"),
    "-A",
    "image",
    "--argstr",
    "packages",
    JSON.stringify(packages),
    "--argstr",
    "source",
    source,
    "--argstr",
    "system",
    system,
  ]);
}

const readImage = (meta) => parseImageClosure(fs.readFileSync(path.join(meta, "image.json"), "utf8"));

async function makeRoot(meta) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "debian-pkgs-root-"));
  const image = readImage(meta);
  fs.mkdirSync(path.join(root, "nix/store"), { recursive: true });
  execFileSync("cp", ["-a", ...image.graph.map((g) => g.path), path.join(root, "nix/store/")]);
  for (const e of (await rootFilesystem(image)).entries) {
    const p = path.join(root, e.path);
    if (e.type === "directory") {
      fs.mkdirSync(p, { recursive: true });
      if (e.mode) fs.chmodSync(p, parseInt(e.mode, 8));
    } else {
      fs.symlinkSync(e.target, p);
    }
  }
  fs.mkdirSync(path.join(root, "dev"), { recursive: true });
  for (const [n, minor] of [
    ["null", 3],
    ["zero", 5],
    ["urandom", 9],
  ]) {
    execFileSync("mknod", ["-m", "666", path.join(root, "dev", n), "c", "1", String(minor)]);
  }
  return { root, image };
}

const runEnv = { PATH: "/bin:/sbin", HOME: "/tmp", SSL_CERT_FILE: "/etc/ssl/certs/ca-bundle.crt" };
const CASES = [
  { name: "curl", packages: ["curl"], runs: [[["curl", "--version"], /^curl 7\.\d+/]] },
  {
    name: "shell/git",
    packages: ["bashInteractive", "coreutils", "moreutils", "nano", "git"],
    runs: [
      [["git", "--version"], /^git version 2\./],
      [
        [
          "bash",
          "-c",
          "cd /tmp && git init -q r && cd r && echo hi > a && git add a && git -c user.name=n -c user.email=e@x commit -qm one && git log --format=%s",
        ],
        /^one$/m,
      ],
      [
        [
          "bash",
          "-c",
          "ls /usr/bin/env && nano --version | head -1 && echo hello | sponge /tmp/s && cat /tmp/s && echo x | ts %%",
        ],
        /GNU nano[\s\S]*hello\n% x/,
      ],
      [["git", "--exec-path"], /^\/nix\/store\/.*-git-.*\/lib\/git-core$/],
    ],
  },
  {
    name: "python3",
    packages: ["python3"],
    runs: [
      [["python3", "-c", 'import json, ssl; print("ok")'], /^ok$/],
      [
        [
          "python3",
          "-c",
          "import sqlite3, hashlib, decimal, ctypes, lzma, bz2, zlib, readline, uuid, urllib.request, asyncio, sys; print(sys.prefix)",
        ],
        /^\/nix\/store\/.*-python3-/,
      ],
    ],
  },
  {
    name: "bash/jq",
    packages: ["bash", "jq"],
    runs: [
      [["jq", "--version"], /^jq-1\./],
      [["bash", "-c", "echo hi | jq -R ."], /^"hi"$/],
    ],
  },
  { name: "busybox", packages: ["busybox"], runs: [[["sh", "-c", "echo busybox $(ls /bin | wc -l)"], /^busybox \d+/]] },
  {
    name: "perl/openssl",
    packages: ["perl", "openssl"],
    runs: [
      [["openssl", "version"], /^OpenSSL 3\./],
      [["perl", "-MJSON::PP", "-MPOSIX", "-e", 'print encode_json([POSIX::floor(2.5)]), "\\n"'], /^\[2\]$/],
    ],
  },
];

const sizes = [];
const summarize = (name, image) => {
  const narSize = image.graph.reduce((a, g) => a + g.narSize, 0);
  sizes.push({ name, paths: image.graph.length, narSize });
};
for (const c of CASES) {
  const t = process.hrtime.bigint();
  const r = buildImage(c.packages);
  if (r.status !== 0) {
    fail(`${c.name}: build-image failed:\n${r.stderr.split("\n").slice(-15).join("\n")}`);
    continue;
  }
  const meta = r.stdout.trim().split("\n").pop();
  const { root, image } = await makeRoot(meta);
  summarize(c.name, image);
  ok(`${c.name}: image built in ${seconds(t)}: ${image.graph.length} store paths`);
  for (const [argv, want] of c.runs) {
    const p = spawnSync("chroot", [root, ...argv], { env: runEnv, encoding: "utf8", cwd: "/" });
    const out = (p.stdout || "") + (p.stderr || "");
    if (p.status === 0 && want.test(p.stdout.trim()))
      ok(`${c.name}: ${argv.join(" ")} -> ${p.stdout.trim().split("\n")[0]}`);
    else fail(`${c.name}: ${argv.join(" ")}: exit ${p.status}\n${out.trim()}`);
  }
  if (!keep) fs.rmSync(root, { recursive: true, force: true });
  else console.log(`      root kept: ${root}`);
}
for (const pkgs of [["git"], ["curl", "jq", "git"]]) {
  const r = buildImage(pkgs);
  if (r.status === 0) summarize(pkgs.join("/"), readImage(r.stdout.trim().split("\n").pop()));
  else fail(`${pkgs.join("/")}: build-image failed`);
}

// Failures that must be clear.
{
  const r = buildImage(["curl"], "aarch64-linux");
  if (r.status !== 0 && /only|nothing for aarch64-linux/.test(r.stderr))
    ok("aarch64-linux fails: " + r.stderr.trim().split("\n").pop());
  else fail(`aarch64-linux: exit ${r.status}: ${r.stderr}`);
  const src = nix("nix-instantiate", ["--eval", "-E", `builtins.attrNames (import ${HERE} { })`]);
  if (src.status !== 0 && /run `node package-sets\/debian-pkgs\/generate.mjs`/.test(src.stderr))
    ok("without packages.json: " + src.stderr.trim().split("\n").pop().slice(0, 100) + "...");
  else if (fs.existsSync(path.join(HERE, "packages.json")))
    ok("(package-sets/debian-pkgs/packages.json exists: missing-file message not checked)");
  else fail(`without packages.json: exit ${src.status}: ${src.stderr}`);
}

// Deterministic builds.
{
  const r = nix("nix-build", [
    "--check",
    "--no-out-link",
    setDir,
    "-A",
    "curl",
    "-A",
    "python3",
    "-A",
    "git",
    "-A",
    "cacert",
    "-A",
    "busybox",
  ]);
  if (r.status === 0) ok("nix-build --check curl python3 git cacert busybox: same output");
  else fail(`nix-build --check: ${r.stderr.split("\n").slice(-10).join("\n")}`);
}

console.log("\nimage                 store paths   closure (sum of narSize)");
for (const s of sizes)
  console.log(`${s.name.padEnd(22)}${String(s.paths).padStart(11)}   ${(s.narSize / 1e6).toFixed(1).padStart(8)} MB`);
console.log(failures ? `\n${failures} FAILED` : "\nall ok");
process.exit(failures ? 1 : 0);
