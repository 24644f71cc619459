#!/usr/bin/env node
// `npm test [-- vitest arguments]`: installs what the suite needs on a fresh Debian or Ubuntu machine, then runs
// it. The suite uses real parts: Nix builds the offline package sets, and real clients pull and run the images.
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import {
  debianSetPackages,
  ensureNpmPackages,
  installDebianPackages,
  missingDebianPackages,
  root,
} from "./system-setup.mjs";

/** What each test needs, and why. */
const TEST_PACKAGES = [
  // Nix builds the images; busybox-static is what the offline package sets (package-sets/test-pkgs) are built from.
  "nix-bin",
  "busybox-static",
  // The real clients and runtimes the tests pull and run images with.
  "skopeo",
  "umoci",
  "runc",
  "bubblewrap",
  "podman",
  "docker.io", // the Docker daemon (test/blob-redirect.test.ts starts one with folders of its own)
  "containerd", // ctr
  "docker-registry", // CNCF distribution, which `npm run bench` compares the registry with
  "git",
  "tar",
  "gzip",
  "zstd", // reads zstd layers back in test/builder-units.test.ts
  "pigz", // `npm run bench` compares the builder's layer compression with tar | pigz
  "curl",
  "util-linux",
  "mmdebstrap", // bootstraps Debian 13 for its Nix 2.26 (test/support/modern-nix.ts)
  "chromium", // the browser test/web-page.test.ts drives with playwright-core
];

ensureNpmPackages();
installDebianPackages(missingDebianPackages([...TEST_PACKAGES, ...debianSetPackages()]), "by the test suite");
// The arm64 images of the offline package set need Debian's arm64 static busybox (downloaded from the apt archive
// into /usr/local/lib/nix-test-pkgs, nothing installed with dpkg).
if (!existsSync("/usr/local/lib/nix-test-pkgs/aarch64-linux/busybox")) {
  if (process.getuid?.() === 0) {
    execFileSync(`${root}package-sets/test-pkgs/fetch-foreign-busybox.sh`, ["aarch64-linux"], { stdio: "inherit" });
  } else {
    console.error(
      `The arm64 tests need Debian's arm64 static busybox. Run:\n  sudo ${root}package-sets/test-pkgs/fetch-foreign-busybox.sh aarch64-linux\nthen run npm test again.`,
    );
    process.exit(1);
  }
}

const child = spawn(`${root}node_modules/.bin/vitest`, ["run", ...process.argv.slice(2)], {
  cwd: root,
  stdio: "inherit",
});
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
