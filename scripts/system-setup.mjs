// What `npm start` and `npm test` install before they run: the npm packages, and on Debian or Ubuntu the system
// packages they need (as root with apt-get; otherwise they print the one command to run).
// Plain JavaScript on purpose: it runs before the npm packages (and tsx) are installed.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const root = fileURLToPath(new URL("../", import.meta.url));

export function have(command) {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

/** npm ci when the packages are missing (a fresh clone). */
export function ensureNpmPackages() {
  if (
    existsSync(`${root}node_modules/.bin/tsx`) &&
    existsSync(`${root}node_modules/wrangler`) &&
    existsSync(`${root}node_modules/vitest`)
  )
    return;
  console.log("Installing npm packages (npm ci)...");
  execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: root, stdio: "inherit" });
}

/** Debian packages of `names` that are not installed (all of them where dpkg is missing). */
export function missingDebianPackages(names) {
  if (!have("dpkg-query")) return [...names];
  return names.filter((name) => {
    const status = spawnSync("dpkg-query", ["-W", "-f", "${Status}", name], { encoding: "utf8" }).stdout ?? "";
    return !status.includes("install ok installed");
  });
}

/**
 * Installs `names` with apt-get as root, or says what to run and exits 1. `purpose` completes "needed ...".
 */
export function installDebianPackages(names, purpose) {
  if (names.length === 0) return;
  const command = `apt-get install -y --no-install-recommends ${names.join(" ")}`;
  if (process.getuid?.() === 0 && have("apt-get")) {
    console.log(`Installing ${names.length} system package${names.length === 1 ? "" : "s"} ${purpose} (${command})...`);
    execFileSync("sh", ["-c", `apt-get update -q && DEBIAN_FRONTEND=noninteractive ${command} -q`], {
      stdio: "inherit",
    });
    return;
  }
  console.error(
    have("apt-get")
      ? `Missing system packages, needed ${purpose}. Run:\n  sudo ${command}\nthen run this again.`
      : `Missing system packages, needed ${purpose}: ${names.join(", ")}. This machine has no apt-get: install their equivalents, then run this again.`,
  );
  process.exit(1);
}

/** The packages the Debian-derived offline package set (package-sets/debian-pkgs) is made of. */
export function debianSetPackages() {
  return readFileSync(`${root}package-sets/debian-pkgs/apt-packages.txt`, "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}
