// A Nix new enough for current nixpkgs (>= 2.18) for the builder, on machines whose own Nix is older (Debian 12
// has 2.8). The machine's Nix is used as it is when it is new enough; otherwise Debian 13's Nix 2.26 runs from a
// bootstrapped trixie root (mmdebstrap, once, cached outside the repo) in bubblewrap, with a store of its own:
// two Nix versions must not share one store database, so the host's /nix is never touched.
//
//   const nix = await prepareModernNix();
//   spawn(nix.commandPrefix[0], [...nix.commandPrefix.slice(1), "node", "main.js"], { env: { ...process.env, ...nix.env } });
//
// Under the prefix, /nix is that separate store (a private mount namespace), and nix-build, nix-instantiate,
// nix-store, nix ... on nix.env.PATH are wrappers that run the trixie binaries on it. The wrappers pass the
// environment through, add `build-users-group =` and `sandbox = false` in front of NIX_CONFIG (the caller's lines
// win), and see only: the trixie root, the store, /tmp, $TMPDIR, $PWD, BUILDER_DATA_DIR, NIXERY_PKGS_PATH and the
// folders in MODERN_NIX_BINDS (colon-separated; env sets it to the project and the foreign busybox folder). With
// MODERN_NIX_TRACE=FILE set, each wrapper call appends a line "COMMAND ARGS" to FILE.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, readlink, rename, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** Nixpkgs' lib/minver.nix. */
export const MIN_NIX_VERSION = "2.18";

/** Outside the repo, so every checkout and every run shares one bootstrap. */
export const MODERN_NIX_CACHE = process.env.MODERN_NIX_CACHE || "/var/cache/nix-edge-registry-tests";
const MIRROR = process.env.MODERN_NIX_MIRROR || "http://deb.debian.org/debian";
const PROJECT_ROOT = fileURLToPath(new URL("../../", import.meta.url));
/** Where package-sets/test-pkgs looks for other systems' busybox (fetch-foreign-busybox.sh). */
const FOREIGN_BUSYBOX_DIR = "/usr/local/lib/nix-test-pkgs";

export interface ModernNix {
  /** The Nix version every nix command under commandPrefix + env runs, e.g. "2.26.3". */
  version: string;
  /** False when the machine's own Nix is new enough and is used as it is (env and commandPrefix are then empty). */
  bootstrapped: boolean;
  /** Environment to add for the process: PATH (wrappers first) and MODERN_NIX_BINDS. */
  env: Record<string, string>;
  /** argv to put in front of a command, so that it sees this Nix's store at /nix. It execs the command. */
  commandPrefix: string[];
  /** The store folder mounted at /nix under commandPrefix (the host's /nix when not bootstrapped). */
  nixDir: string;
  /** The bootstrapped Debian 13 root, when there is one. */
  root?: string;
}

let prepared: Promise<ModernNix> | undefined;

/** Once per process: the first call may bootstrap Debian 13 (45 to 110 s here; needs the Debian archive). */
export function prepareModernNix(): Promise<ModernNix> {
  prepared ??= prepare().catch((error: unknown) => {
    prepared = undefined;
    throw error;
  });
  return prepared;
}

async function prepare(): Promise<ModernNix> {
  // Not our own wrappers, should this process already run under them.
  const hostPath = (process.env.PATH ?? "")
    .split(":")
    .filter((dir) => dir !== join(MODERN_NIX_CACHE, "bin"))
    .join(":");
  const hostVersion = await nixVersion("nix-build", { ...process.env, PATH: hostPath });
  if (hostVersion && atLeast(hostVersion, MIN_NIX_VERSION)) {
    return { version: hostVersion, bootstrapped: false, env: {}, commandPrefix: [], nixDir: "/nix" };
  }
  if (process.getuid?.() !== 0) {
    throw new Error(
      `this machine's Nix is ${hostVersion ?? "missing"} (< ${MIN_NIX_VERSION}); running Debian 13's Nix instead needs root`,
    );
  }
  for (const [tool, pkg] of [
    ["bwrap", "bubblewrap"],
    ["unshare", "util-linux"],
    ["mount", "mount"],
  ]) {
    if (!(await commandExists(tool)))
      throw new Error(`${tool} is missing: apt-get install ${pkg} (.ci/run installs it)`);
  }
  const root = join(MODERN_NIX_CACHE, "trixie-root");
  const nixDir = join(MODERN_NIX_CACHE, "nix");
  const home = join(MODERN_NIX_CACHE, "home");
  const bin = join(MODERN_NIX_CACHE, "bin");
  if (!existsSync(join(root, "usr/bin/nix-build"))) {
    if (existsSync(root))
      throw new Error(`${root} has no usr/bin/nix-build; remove it (rm -rf --one-file-system) to bootstrap it again`);
    await bootstrapTrixie(root);
  }
  await mkdir(nixDir, { recursive: true });
  await mkdir(home, { recursive: true });
  // The mount point for the store under commandPrefix; empty and unused on a machine without Nix.
  await mkdir("/nix", { recursive: true });
  await writeWrappers(bin, root, nixDir, home);

  const env: Record<string, string> = {
    PATH: `${bin}:${hostPath || "/usr/bin:/bin"}`,
    MODERN_NIX_BINDS: [
      PROJECT_ROOT.replace(/\/$/, ""),
      tmpdir(),
      ...(existsSync(FOREIGN_BUSYBOX_DIR) ? [FOREIGN_BUSYBOX_DIR] : []),
    ].join(":"),
  };
  const commandPrefix = privateNixPrefix(nixDir);
  const version = await nixVersion(join(bin, "nix-build"), { ...process.env, ...env });
  if (!version || !atLeast(version, MIN_NIX_VERSION)) {
    throw new Error(
      `the Nix in ${root} is ${version ?? "not working"}, not >= ${MIN_NIX_VERSION}; remove ${root} to bootstrap it again`,
    );
  }
  return { version, bootstrapped: true, env, commandPrefix, nixDir, root };
}

/** Builds the root in a temporary folder and renames it into place, so a killed run never leaves half a root. */
async function bootstrapTrixie(root: string): Promise<void> {
  if (!(await commandExists("mmdebstrap"))) {
    throw new Error(
      "mmdebstrap is missing: apt-get install mmdebstrap (.ci/run installs it); it bootstraps Debian 13 for its Nix 2.26",
    );
  }
  await mkdir(MODERN_NIX_CACHE, { recursive: true });
  await removeAbandonedPartials(root);
  const partial = `${root}.partial-${process.pid}`;
  const started = Date.now();
  try {
    // Its own mount and PID namespaces: when it is killed, its mounts go and so do all its processes (--kill-child);
    // and unshare dies with this process where setpriv can ask for that, so a killed run stops writing the cache.
    // The aptopt repeats the host's apt setting: the archive here may serve an older snapshot's Release files.
    const dieWithParent = (await setprivHasPdeathsig()) ? ["setpriv", "--pdeathsig", "KILL", "--"] : [];
    const [command, ...args] = [
      ...dieWithParent,
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "--pid",
      "--fork",
      "--kill-child",
      "mmdebstrap",
      "--variant=essential",
      "--include=nix-bin,busybox-static,ca-certificates",
      '--aptopt=Acquire::Check-Valid-Until "false"',
      "trixie",
      partial,
      MIRROR,
    ];
    await execFileAsync(command, args, { timeout: 15 * 60_000, maxBuffer: 64 * 1024 * 1024 });
  } catch (error) {
    await removeTree(partial);
    const e = error as { stderr?: string; stdout?: string; message: string };
    const output = `${e.stderr ?? ""}${e.stdout ?? ""}`.trimEnd().split("\n").slice(-15).join("\n");
    throw new Error(
      `bootstrapping Debian 13 (for Nix >= ${MIN_NIX_VERSION}) from ${MIRROR} failed; is the Debian archive reachable? (MODERN_NIX_MIRROR picks another)\n${output || e.message}`,
      { cause: error },
    );
  }
  try {
    await rename(partial, root);
  } catch (error) {
    // Another run finished first: keep its root.
    await removeTree(partial);
    if (!existsSync(join(root, "usr/bin/nix-build"))) throw error;
  }
  console.error(`modern-nix: bootstrapped Debian 13 in ${((Date.now() - started) / 1000).toFixed(1)} s at ${root}`);
}

/** Partial roots whose run is gone (killed mid-bootstrap). */
async function removeAbandonedPartials(root: string): Promise<void> {
  const prefix = `${root.split("/").pop()}.partial-`;
  for (const name of await readdir(MODERN_NIX_CACHE)) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length));
    if (Number.isInteger(pid) && pid !== process.pid && isAlive(pid)) continue;
    await removeTree(join(MODERN_NIX_CACHE, name));
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** --one-file-system: never into a mount (e.g. a /dev or /proc bind) a killed bootstrap may have left. */
async function removeTree(dir: string): Promise<void> {
  await execFileAsync("rm", ["-rf", "--one-file-system", "--", dir]).catch(() => undefined);
}

/** One bash script, linked under every nix command's name; it runs the trixie binary of that name. */
function wrapperScript(root: string, nixDir: string, home: string): string {
  return `#!/bin/bash
# Generated by test/support/modern-nix.ts: runs Debian 13's Nix command of this link's name on its own store.
set -euo pipefail
cmd=\${0##*/}
args=(--bind ${shellQuote(root)} / --bind ${shellQuote(nixDir)} /nix --dev /dev --proc /proc --die-with-parent)
# Nix's caches under $HOME stay apart from the host Nix's and out of the shared root.
if [ -n "\${HOME:-}" ] && [ "$HOME" != / ]; then args+=(--bind ${shellQuote(home)} "$HOME"); fi
IFS=: read -r -a extra <<< "\${MODERN_NIX_BINDS:-}"
for p in /tmp "\${TMPDIR:-}" "\${extra[@]}" "\${BUILDER_DATA_DIR:-}" "\${NIXERY_PKGS_PATH:-}" "$PWD"; do
  [ -n "$p" ] || continue
  case $p in /*) ;; *) p=$PWD/$p ;; esac
  if [ -e "$p" ] && [ "$p" != / ]; then args+=(--bind "$p" "$p"); fi
done
args+=(--ro-bind-try /etc/resolv.conf /etc/resolv.conf --ro-bind-try /etc/hosts /etc/hosts --chdir "$PWD")
# No nixbld group in the root: build as root. No sandbox, as in the setup ENVIRONMENT.md checked.
NIX_CONFIG=$'build-users-group =\\nsandbox = false'\${NIX_CONFIG:+$'\\n'"$NIX_CONFIG"}
export NIX_CONFIG
if [ -n "\${MODERN_NIX_TRACE:-}" ]; then printf '%s\\n' "$cmd $*" >> "$MODERN_NIX_TRACE"; fi
exec bwrap "\${args[@]}" -- "/usr/bin/$cmd" "$@"
`;
}

async function writeWrappers(bin: string, root: string, nixDir: string, home: string): Promise<void> {
  await mkdir(bin, { recursive: true });
  const script = join(bin, "modern-nix-run");
  const content = wrapperScript(root, nixDir, home);
  if ((await readFile(script, "utf8").catch(() => "")) !== content) {
    const temp = `${script}.${process.pid}`;
    await writeFile(temp, content);
    await chmod(temp, 0o755);
    await rename(temp, script);
  }
  const commands = (await readdir(join(root, "usr/bin"))).filter((name) => name === "nix" || name.startsWith("nix-"));
  for (const name of commands) {
    const link = join(bin, name);
    if ((await readlink(link).catch(() => "")) === "modern-nix-run") continue;
    const temp = `${link}.${process.pid}`;
    await symlink("modern-nix-run", temp);
    await rename(temp, link);
  }
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

async function setprivHasPdeathsig(): Promise<boolean> {
  return execFileAsync("setpriv", ["--help"]).then(
    ({ stdout }) => stdout.includes("--pdeathsig"),
    () => false,
  );
}

async function commandExists(name: string): Promise<boolean> {
  return execFileAsync("sh", ["-c", 'command -v "$1"', "sh", name]).then(
    () => true,
    () => false,
  );
}

/** "2.26.3" from `nix-build --version`, or null when there is no working nix-build. */
async function nixVersion(nixBuild: string, env: NodeJS.ProcessEnv): Promise<string | null> {
  try {
    const { stdout } = await execFileAsync(nixBuild, ["--version"], { env });
    return /(\d+\.\d+(?:\.\d+)?)/.exec(stdout)?.[1] ?? null;
  } catch {
    return null;
  }
}

/** Compares dotted versions numerically: 2.26.3 >= 2.18. */
export function atLeast(version: string, minimum: string): boolean {
  const a = version.split(".").map(Number);
  const b = minimum.split(".").map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

/**
 * An argv prefix: what follows runs with `nixDir` mounted at /nix by `mount --bind` in a private mount namespace, so
 * only that process and its children see that store at /nix.
 */
export function privateNixPrefix(nixDir: string): string[] {
  return [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$1" /nix && shift && exec "$@"',
    "sh",
    nixDir,
  ];
}
