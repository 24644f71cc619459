#!/usr/bin/env node
// `npm start`: installs what is missing, then runs the registry (scripts/serve.ts).
// Plain JavaScript on purpose: it must run before the npm packages (and tsx) are installed.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));

function have(command) {
  return spawnSync("sh", ["-c", `command -v ${command}`], { stdio: "ignore" }).status === 0;
}

if (!existsSync(`${root}node_modules/.bin/tsx`) || !existsSync(`${root}node_modules/wrangler`)) {
  console.log("Installing npm packages (npm ci)...");
  execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: root, stdio: "inherit" });
}

const missing = [];
if (!have("nix-build")) missing.push("nix-bin");
if (process.env.NIXERY_PKGS_PATH && !existsSync("/usr/bin/busybox")) missing.push("busybox-static");
if (missing.length > 0) {
  const command = `apt-get install -y ${missing.join(" ")}`;
  if (process.getuid?.() === 0 && have("apt-get")) {
    console.log(`Installing ${missing.join(", ")} (${command})...`);
    execFileSync("sh", ["-c", `apt-get update -q && DEBIAN_FRONTEND=noninteractive ${command}`], { stdio: "inherit" });
  } else {
    console.error(`Nix is needed to build images and is not installed. On Debian or Ubuntu run:\n  sudo ${command}\nor install Nix from https://nixos.org/download, then run npm start again.`);
    process.exit(1);
  }
}

const child = spawn(`${root}node_modules/.bin/tsx`, [`${root}scripts/serve.ts`], { cwd: root, stdio: "inherit" });
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal));
child.on("exit", (code) => process.exit(code ?? 1));
