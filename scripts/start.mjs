#!/usr/bin/env node
// `npm start`: installs what is missing, then runs the registry (scripts/serve.ts).
// Plain JavaScript on purpose: it must run before the npm packages (and tsx) are installed.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { ensureNpmPackages, have, installDebianPackages, root } from "./system-setup.mjs";

ensureNpmPackages();

// Current nixpkgs needs Nix >= 2.18 (its lib/minver.nix); the offline package sets evaluate on any Nix.
const NIXPKGS_MIN_NIX = [2, 18];
const UPSTREAM_INSTALLER = "curl -fsSL https://nixos.org/nix/install | sh -s -- --daemon";

/** [major, minor] of a version string such as "2.26.3+dfsg-1", or null. */
function majorMinor(text) {
  const match = /(\d+)\.(\d+)/.exec(text ?? "");
  return match ? [Number(match[1]), Number(match[2])] : null;
}
const atLeast = (v, min) => v !== null && (v[0] > min[0] || (v[0] === min[0] && v[1] >= min[1]));

/** The version of nix-bin that apt would install (Debian 12: 2.8.0; Debian 13: 2.26.3), or null. */
function aptNixVersion() {
  if (!have("apt-cache")) return null;
  const out = spawnSync("apt-cache", ["policy", "nix-bin"], { encoding: "utf8" }).stdout ?? "";
  return majorMinor(/Candidate:\s*(\S+)/.exec(out)?.[1]);
}

const missing = [];
if (!have("nix-build")) {
  const apt = aptNixVersion();
  if (!process.env.NIXERY_PKGS_PATH && !atLeast(apt, NIXPKGS_MIN_NIX)) {
    // nixpkgs mode and this system's Nix package is too old for nixpkgs (Debian 12, Ubuntu 22.04): installing it
    // would give a registry whose every build fails.
    console.error(
      `Nix is needed to build images and is not installed, and ${apt ? `this system's nix-bin is ${apt.join(".")}` : "apt has no nix-bin"}, ` +
        `older than the ${NIXPKGS_MIN_NIX.join(".")} current nixpkgs needs. Install Nix with the upstream installer:\n  ${UPSTREAM_INSTALLER}\n` +
        "then open a new shell and run npm start again. (To try the registry offline without it: NIXERY_PKGS_PATH=package-sets/test-pkgs npm start)",
    );
    process.exit(1);
  }
  missing.push("nix-bin");
}
if (process.env.NIXERY_PKGS_PATH && !existsSync("/usr/bin/busybox")) missing.push("busybox-static");
if (missing.length > 0) {
  if (!have("apt-get")) {
    console.error(
      `Nix is needed to build images and is not installed: install it with the upstream installer (${UPSTREAM_INSTALLER}), then run npm start again.`,
    );
    process.exit(1);
  }
  installDebianPackages(missing, "to build images (Nix, and the busybox the offline package sets are built from)");
}

const child = spawn(`${root}node_modules/.bin/tsx`, [`${root}scripts/serve.ts`], { cwd: root, stdio: "inherit" });
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
child.on("exit", (code) => process.exit(code ?? 1));
