#!/usr/bin/env node
// Generates an offline Nix package set from the Debian packages installed on this machine.
//
//   node package-sets/debian-pkgs/generate.mjs [OUTDIR] [--root PKG]... [--all] [--quiet]
//
// OUTDIR (default package-sets/debian-pkgs/generated/) receives a self-contained package set: packages.json
// (written here, from dpkg's database and the files on disk) next to copies of default.nix and
// build-package.sh (the Nix side). Use OUTDIR as the package set: import it like nixpkgs, or give it
// to the builder as a `path` source (NIXERY_PKGS_PATH). See README.md.
//
// What it does, for the closure of the root packages (the nixpkgs-named ones below, plus --root PKG,
// or every installed package with --all):
// - reads the installed packages (dpkg-query) and their file lists (dpkg's info/*.list, i.e. what
//   `dpkg -L` prints, with dpkg's diversions applied); resolves Depends/Pre-Depends to installed
//   packages (virtual packages and alternatives: the first one installed);
// - canonicalises paths through the merged-/usr symlinks (/bin -> /usr/bin, /lib -> /usr/lib) and
//   leaves out documentation, manuals, translations and Debian QA metadata (EXCLUDE below);
// - reads every kept file once: computes the NAR hash of the package's filtered tree (so Nix can
//   import it with `builtins.path { sha256 = ...; }` without reading the files again), and finds ELF
//   objects (interpreter, DT_NEEDED, RUNPATH) and `#!` scripts;
// - resolves each ELF's DT_NEEDED to the package (and directory) that provides it, each script's
//   interpreter to the package that owns it, each symlink to the package that owns its target; those
//   become store references (RUNPATH, rewritten `#!` lines, absolute symlinks), adding interpreter
//   packages to the closure (like patchShebangs does);
// - breaks dependency cycles (Nix references cannot form cycles; Debian dependencies can): inside a
//   cycle, Debian-only edges are dropped first (libc6 -> libgcc-s1), then, if needed, edges that
//   only a rewrite wants (that rewrite is then skipped and reported);
// - writes one JSON object per package: version, store name, attribute name, Debian deps, final
//   deps, the file list (for builtins.path's filter), its NAR hash, and the build plan (ELF patches,
//   shebang rewrites, symlink rewrites, and a few extra files: python3's prefix, bash's bin/sh).
//
// The output depends only on the installed packages (names, versions, files): the same machine
// state gives the same bytes. Plain Node, no dependencies.

import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ADMINDIR = process.env.DPKG_ADMINDIR || "/var/lib/dpkg";
const SYSTEM = "x86_64-linux";
const DPKG_ARCH = "amd64";
const FORMAT_VERSION = 1;

// nixpkgs attribute -> Debian package. Required ones must be installed (apt-packages.txt); optional
// ones are roots only where installed. `cacert` and `busybox` are special in default.nix (the CA
// bundle and busybox's applet links); the Debian packages are there too, under `debian.`.
const ALIASES = [
  ["bash", "bash", true],
  ["bashInteractive", "bash", true],
  ["busybox", "busybox-static", true],
  ["cacert", "ca-certificates", true],
  ["coreutils", "coreutils", true],
  ["curl", "curl", true],
  ["git", "git", true],
  ["iana-etc", "netbase", true],
  ["jq", "jq", true],
  ["moreutils", "moreutils", true],
  ["nano", "nano", true],
  ["openssl", "openssl", true],
  ["patchelf", "patchelf", true],
  ["python3", "python3", true],
  // Optional: common tools, most of them Essential or Priority: required/important on Debian.
  ["bzip2", "bzip2", false],
  ["dash", "dash", false],
  ["diffutils", "diffutils", false],
  ["file", "file", false],
  ["findutils", "findutils", false],
  ["gnugrep", "grep", false],
  ["gnumake", "make", false],
  ["gnupatch", "patch", false],
  ["gnused", "sed", false],
  ["gnutar", "tar", false],
  ["gzip", "gzip", false],
  ["less", "less", false],
  ["ncurses", "ncurses-bin", false],
  ["openssh", "openssh-client", false],
  ["perl", "perl", false],
  ["procps", "procps", false],
  ["sqlite", "sqlite3", false],
  ["unzip", "unzip", false],
  ["util-linux", "util-linux", false],
  ["wget", "wget", false],
  ["xz", "xz-utils", false],
  ["zip", "zip", false],
  ["zlib", "zlib1g", false],
  ["zstd", "zstd", false],
];
// Always in the set: the build tools of default.nix (the builder is busybox; ELF files are patched
// by patchelf, run from its own imported files through libc6's loader).
const TOOLS = ["busybox-static", "patchelf", "libc6", "libstdc++6", "libgcc-s1"];

// Left out of every package (canonical paths): documentation, manual and info pages, translations,
// and Debian's QA/bug-reporting metadata. They are most of the bytes of many small packages and
// nothing runs them.
const EXCLUDE = [
  "/usr/share/doc",
  "/usr/share/doc-base",
  "/usr/share/man",
  "/usr/share/info",
  "/usr/share/locale",
  "/usr/share/gtk-doc",
  "/usr/share/help",
  "/usr/share/lintian",
  "/usr/share/bug",
];
const STANDARD_LIB_DIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/lib64"];
// Loaded by the kernel as the interpreter: never looked up through RUNPATH.
const ALWAYS_LOADED = new Set(["ld-linux-x86-64.so.2"]);
// Loaded by every dynamically linked program (its executable needs it, so the loader has it before
// any library's dependencies are looked up, or before anything is dlopen'ed): libraries do not
// need a RUNPATH entry for it (executables get one). This spares patching most plugins (gconv
// modules, perl and python extensions that need nothing else).
const LOADED_BEFORE_LIBRARIES = new Set(["libc.so.6"]);
// Libraries that an object dlopen()s by name, found through its RUNPATH like DT_NEEDED ones:
// glibc loads libgcc_s.so.1 for pthread_cancel/pthread_exit/backtrace (nixpkgs' glibc carries a
// copy of libgcc_s for this). Keyed by the object's DT_SONAME.
const DLOPENS = new Map([["libc.so.6", ["libgcc_s.so.1"]]]);

// ---- arguments -------------------------------------------------------------------------------

function usage(msg) {
  if (msg) process.stderr.write(`generate.mjs: ${msg}\n`);
  process.stderr.write(
    "usage: node package-sets/debian-pkgs/generate.mjs [OUTDIR] [--root PKG]... [--all] [--quiet]\n",
  );
  process.exit(2);
}

const opts = { out: path.join(HERE, "generated"), roots: [], all: false, quiet: false };
{
  const argv = process.argv.slice(2);
  let outSet = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--root") {
      if (i + 1 >= argv.length) usage("--root needs a package name");
      opts.roots.push(argv[++i]);
    } else if (a === "--all") opts.all = true;
    else if (a === "--quiet" || a === "-q") opts.quiet = true;
    else if (a === "--help" || a === "-h") usage();
    else if (a.startsWith("-")) usage(`unknown option ${a}`);
    else if (!outSet) {
      opts.out = path.resolve(a);
      outSet = true;
    } else usage(`unexpected argument ${a}`);
  }
}
const log = (...a) => {
  if (!opts.quiet) process.stderr.write(a.join(" ") + "\n");
};
const die = (msg) => {
  process.stderr.write(`generate.mjs: error: ${msg}\n`);
  process.exit(1);
};
const t0 = process.hrtime.bigint();

if (process.platform !== "linux" || process.arch !== "x64") {
  die(
    `this package set is made from an x86_64 Debian machine's packages (this is ${process.platform}/${process.arch})`,
  );
}

// ---- dpkg's database ---------------------------------------------------------------------------

const byteCompare = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));
const sortBytes = (xs) => xs.sort(byteCompare);

let dpkgArch;
try {
  dpkgArch = execFileSync("dpkg", ["--print-architecture"], { encoding: "utf8" }).trim();
} catch (e) {
  die(`cannot run dpkg (${e.message}); this needs a Debian machine`);
}
if (dpkgArch !== DPKG_ARCH) die(`dpkg's architecture is ${dpkgArch}, not ${DPKG_ARCH}`);

const FIELDS = [
  "binary:Package",
  "Package",
  "Architecture",
  "Version",
  "db:Status-Abbrev",
  "Essential",
  "Provides",
  "Pre-Depends",
  "Depends",
];
const installed = new Map(); // name -> { name, listName, arch, version, essential, depends }
const providers = new Map(); // virtual name -> [package]
{
  const out = execFileSync(
    "dpkg-query",
    [`--admindir=${ADMINDIR}`, "-W", "-f=" + FIELDS.map((f) => "${" + f + "}").join("\t") + "\n"],
    { encoding: "utf8", maxBuffer: 1 << 28 },
  );
  for (const line of out.split("\n")) {
    if (!line) continue;
    const [binName, name, arch, version, status, essential, provides, preDepends, depends] = line.split("\t");
    // Second letter of the status: i(nstalled), U(npacked), F (half-configured), W/t (triggers):
    // the files are on disk. n, c (config files only) and H (half-installed) are left out.
    if (!"iUFWt".includes(status[1])) continue;
    if (arch !== DPKG_ARCH && arch !== "all") continue; // foreign-architecture packages
    if (installed.has(name)) continue;
    installed.set(name, {
      name,
      listName: binName,
      arch,
      version,
      essential: essential === "yes",
      depends: [preDepends, depends].filter(Boolean).join(", "),
    });
    for (const p of provides
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean)) {
      const v = p.split(/[\s(]/)[0];
      if (!providers.has(v)) providers.set(v, []);
      providers.get(v).push(name);
    }
  }
}
for (const list of providers.values()) sortBytes(list);

// "a (>= 1) | b:any, c" -> resolved installed packages.
function resolveDepends(field) {
  const out = [];
  for (const group of field
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)) {
    let found = null;
    for (const alt of group.split("|")) {
      const n = alt.trim().split(/[\s(]/)[0].replace(/:.*$/, "");
      if (installed.has(n)) {
        found = n;
        break;
      }
      if (providers.has(n)) {
        found = providers.get(n)[0];
        break;
      }
    }
    if (found !== null) out.push(found);
  }
  return out;
}
for (const p of installed.values()) {
  p.debDeps = sortBytes([...new Set(resolveDepends(p.depends))].filter((d) => d !== p.name));
}

// Diversions: triples of lines (from, to, diverting package); ":" diverts for every package.
const diversions = new Map();
{
  const file = path.join(ADMINDIR, "diversions");
  if (fs.existsSync(file)) {
    const l = fs.readFileSync(file, "utf8").split("\n");
    for (let i = 0; i + 2 < l.length; i += 3) diversions.set(l[i], { to: l[i + 1], by: l[i + 2] });
  }
}

// ---- paths -------------------------------------------------------------------------------------

const realDirCache = new Map();
function realDir(d) {
  let r = realDirCache.get(d);
  if (r === undefined) {
    try {
      r = fs.realpathSync(d);
    } catch {
      r = d;
    }
    realDirCache.set(d, r);
  }
  return r;
}
// The path with its parent directories' symlinks resolved (the last component is not followed).
function canon(p) {
  if (p === "/") return "/";
  const d = realDir(path.posix.dirname(p));
  return d === "/" ? "/" + path.posix.basename(p) : d + "/" + path.posix.basename(p);
}
const excluded = (p) => EXCLUDE.some((e) => p === e || p.startsWith(e + "/"));
// Host path -> path in the store path: /usr/X -> X, /X -> X.
const mapPath = (p) => (p.startsWith("/usr/") ? p.slice(5) : p.slice(1));
function lstatOrNull(p) {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

function readList(pkg) {
  let text;
  for (const n of [pkg.listName, pkg.name]) {
    const f = path.join(ADMINDIR, "info", `${n}.list`);
    if (fs.existsSync(f)) {
      text = fs.readFileSync(f, "utf8");
      break;
    }
  }
  if (text === undefined)
    text = execFileSync("dpkg-query", [`--admindir=${ADMINDIR}`, "-L", pkg.listName], { encoding: "utf8" });
  const listed = text.split("\n").filter((l) => l.startsWith("/") && l !== "/.");
  return listed.map((l) => {
    const d = diversions.get(l);
    return d && d.by !== pkg.name ? d.to : l;
  });
}

// Every installed package's listed paths, canonical, for "who owns this file" (first owner, in
// sorted package order, wins for non-directories).
const owners = new Map(); // canonical path -> package name
const listedOf = new Map(); // package -> listed paths (diverted)
const allListedDirs = new Set(); // parents of listed paths, as listed (dpkg's directories)
for (const name of sortBytes([...installed.keys()])) {
  const listed = readList(installed.get(name));
  listedOf.set(name, listed);
  for (const l of listed) {
    allListedDirs.add(path.posix.dirname(l));
    const c = canon(l);
    if (!owners.has(c)) owners.set(c, name);
  }
}
// Following symlinks that no package owns (alternatives in /etc/alternatives, /lib64...):
// the first owned path on the way, as { pkg, path (canonical) }, or null.
function resolveOwned(p, followOwnedLinks = false) {
  for (let i = 0; i < 40; i++) {
    const c = canon(p);
    const st = lstatOrNull(c);
    if (!st) return null;
    const o = owners.get(c);
    if (o && !excluded(c) && !(followOwnedLinks && st.isSymbolicLink())) return { pkg: o, path: c };
    if (!st.isSymbolicLink()) return null;
    const t = fs.readlinkSync(c);
    p = t.startsWith("/") ? t : path.posix.join(path.posix.dirname(c), t);
  }
  return null;
}

// ---- scanning a package ------------------------------------------------------------------------

function narString(h, s) {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  h.update(len);
  h.update(b);
  const pad = (8 - (b.length % 8)) % 8;
  if (pad) h.update(Buffer.alloc(pad));
}

// ELF: { foreign } or { interp, needed, soname, runpath, hasDynamic }; null if not ELF.
function elfInfo(buf) {
  if (buf.length < 64 || buf[0] !== 0x7f || buf[1] !== 0x45 || buf[2] !== 0x4c || buf[3] !== 0x46) return null;
  if (buf[4] !== 2 || buf[5] !== 1) return { foreign: true };
  const type = buf.readUInt16LE(16);
  const machine = buf.readUInt16LE(18);
  if (machine !== 62 || (type !== 2 && type !== 3)) return { foreign: true };
  const phoff = Number(buf.readBigUInt64LE(32));
  const phentsize = buf.readUInt16LE(54);
  const phnum = buf.readUInt16LE(56);
  const loads = [];
  let interp = null;
  let dyn = null;
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (o + 56 > buf.length) return { foreign: true };
    const ptype = buf.readUInt32LE(o);
    const offset = Number(buf.readBigUInt64LE(o + 8));
    const vaddr = Number(buf.readBigUInt64LE(o + 16));
    const filesz = Number(buf.readBigUInt64LE(o + 32));
    if (ptype === 1) loads.push({ offset, vaddr, filesz });
    else if (ptype === 3 && offset + filesz <= buf.length)
      interp = buf
        .subarray(offset, offset + filesz)
        .toString("latin1")
        .replace(/\0.*$/s, "");
    else if (ptype === 2 && filesz > 0 && offset + filesz <= buf.length) dyn = { offset, filesz };
  }
  if (!dyn) return { interp, needed: [], soname: null, runpath: null, hasDynamic: false };
  const entries = [];
  let strtab = null;
  for (let o = dyn.offset; o + 16 <= dyn.offset + dyn.filesz; o += 16) {
    const tag = Number(buf.readBigInt64LE(o));
    const val = Number(buf.readBigUInt64LE(o + 8));
    if (tag === 0) break;
    if (tag === 5) strtab = val;
    entries.push([tag, val]);
  }
  const seg = loads.find((l) => strtab !== null && strtab >= l.vaddr && strtab < l.vaddr + l.filesz);
  if (!seg) return { foreign: true };
  const strOff = strtab - seg.vaddr + seg.offset;
  const str = (v) => {
    const s = strOff + v;
    const e = buf.indexOf(0, s);
    return buf.subarray(s, e < 0 ? buf.length : e).toString("latin1");
  };
  const needed = [];
  let soname = null;
  let runpath = null;
  let rpath = null;
  for (const [tag, val] of entries) {
    if (tag === 1) needed.push(str(val));
    else if (tag === 14) soname = str(val);
    else if (tag === 15) rpath = str(val);
    else if (tag === 29) runpath = str(val);
  }
  return { interp, needed, soname, runpath: runpath ?? rpath, hasDynamic: true };
}

// The `#!` line of an executable script: { len (bytes of the line), interp, rest } or null.
function shebangInfo(buf) {
  if (buf.length < 3 || buf[0] !== 0x23 || buf[1] !== 0x21) return null;
  let e = buf.indexOf(0x0a);
  if (e < 0) e = buf.length;
  if (e > 4096) return null;
  const line = buf.subarray(2, e).toString("latin1").replace(/\r$/, "");
  const m = /^[ \t]*(\S+)[ \t]*(.*)$/.exec(line);
  if (!m) return null;
  return { len: e, interp: m[1], rest: m[2] };
}

const scanned = new Map(); // package -> scan result
let bytesRead = 0;

function scan(name) {
  if (scanned.has(name)) return scanned.get(name);
  const listed = listedOf.get(name);
  const listedDirs = new Set(listed.map((l) => path.posix.dirname(l)));
  const entries = new Map(); // canonical path -> { type, exec, target }
  const skipped = { missing: 0, excluded: 0, other: 0 };
  const addDir = (c) => {
    while (c !== "/" && !entries.has(c)) {
      entries.set(c, { type: "directory" });
      c = path.posix.dirname(c);
    }
  };
  for (const l of listed) {
    if (/[\t\n\r\\]/.test(l) || l.includes("\ufffd")) {
      skipped.other++;
      continue;
    }
    const c = canon(l);
    if (excluded(c)) {
      skipped.excluded++;
      continue;
    }
    const st = lstatOrNull(c);
    if (!st) {
      skipped.missing++;
      continue;
    }
    if (st.isDirectory()) {
      addDir(c);
      continue;
    }
    if (st.isSymbolicLink()) {
      // A listed directory that is a symlink on disk (merged /usr: /bin, /lib, ...) when the
      // package lists paths under it: dpkg sees a directory; its contents are canonicalised.
      let isDir = false;
      try {
        isDir = fs.statSync(c).isDirectory();
      } catch {}
      if (isDir && (listedDirs.has(l) || allListedDirs.has(l))) {
        addDir(realDir(c));
        continue;
      }
      addDir(path.posix.dirname(c));
      entries.set(c, { type: "symlink", target: fs.readlinkSync(c) });
      continue;
    }
    if (st.isFile()) {
      addDir(path.posix.dirname(c));
      entries.set(c, {
        type: "regular",
        exec: (st.mode & 0o100) !== 0,
        inode: st.nlink > 1 ? `${st.dev}:${st.ino}` : null,
      });
      continue;
    }
    skipped.other++;
  }

  // The NAR of the filtered tree rooted at "/" (what builtins.path imports), reading every file once.
  const children = new Map(); // dir -> [names]
  children.set("/", []);
  for (const p of entries.keys()) {
    const d = path.posix.dirname(p);
    if (!children.has(d)) children.set(d, []);
    children.get(d).push(path.posix.basename(p));
    if (entries.get(p).type === "directory" && !children.has(p)) children.set(p, []);
  }
  const h = crypto.createHash("sha256");
  const elfs = [];
  const scripts = [];
  let size = 0;
  narString(h, "nix-archive-1");
  const dump = (p, e) => {
    narString(h, "(");
    narString(h, "type");
    if (e.type === "directory") {
      narString(h, "directory");
      for (const n of sortBytes(children.get(p) || [])) {
        const cp = p === "/" ? "/" + n : p + "/" + n;
        narString(h, "entry");
        narString(h, "(");
        narString(h, "name");
        narString(h, n);
        narString(h, "node");
        dump(cp, entries.get(cp));
        narString(h, ")");
      }
    } else if (e.type === "symlink") {
      narString(h, "symlink");
      narString(h, "target");
      narString(h, e.target);
    } else {
      narString(h, "regular");
      if (e.exec) {
        narString(h, "executable");
        narString(h, "");
      }
      const buf = fs.readFileSync(p);
      bytesRead += buf.length;
      size += buf.length;
      narString(h, "contents");
      narString(h, buf);
      const elf = elfInfo(buf);
      if (elf && !elf.foreign) elfs.push({ path: p, ...elf });
      else if (!elf && e.exec) {
        const sb = shebangInfo(buf);
        if (sb) scripts.push({ path: p, ...sb });
      }
    }
    narString(h, ")");
  };
  dump("/", { type: "directory" });
  const r = { name, entries, narHash: h.digest("hex"), size, elfs, scripts, skipped };
  scanned.set(name, r);
  return r;
}

// ---- the closure -------------------------------------------------------------------------------

function missingRoots(names) {
  return names.filter((n) => !installed.has(n));
}

const requiredMissing = missingRoots(
  ALIASES.filter((a) => a[2])
    .map((a) => a[1])
    .concat(TOOLS),
);
if (requiredMissing.length) {
  die(
    `not installed: ${[...new Set(requiredMissing)].join(" ")}\n` +
      `  install them first: apt-get install -y $(cat ${path.relative(process.cwd(), path.join(HERE, "apt-packages.txt")) || "apt-packages.txt"})`,
  );
}
if (missingRoots(opts.roots).length) die(`--root: not installed: ${missingRoots(opts.roots).join(" ")}`);
const roots = opts.all
  ? [...installed.keys()]
  : [...ALIASES.filter((a) => installed.has(a[1])).map((a) => a[1]), ...TOOLS, ...opts.roots];

const inSet = new Set();
function addClosure(names) {
  const stack = [...names];
  const added = [];
  while (stack.length) {
    const n = stack.pop();
    if (inSet.has(n)) continue;
    inSet.add(n);
    added.push(n);
    stack.push(...installed.get(n).debDeps);
  }
  return added;
}

// Interpreter of a script: { pkg, path } or null (and its rewritten `#!` line's parts).
function interpreterOf(script) {
  let interp = script.interp;
  let rest = script.rest;
  let viaEnv = false;
  if (/^\/(usr\/)?bin\/env$/.test(interp)) {
    const m = /^(\S+)[ \t]*(.*)$/.exec(rest);
    if (!m || m[1].startsWith("-") || m[1].includes("=")) return null;
    let found = null;
    for (const d of ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]) {
      if (lstatOrNull(path.posix.join(d, m[1]))) {
        found = path.posix.join(d, m[1]);
        break;
      }
    }
    if (!found) return null;
    interp = found;
    rest = m[2];
    viaEnv = true;
  }
  if (!interp.startsWith("/")) return null;
  const o = resolveOwned(interp);
  return o ? { ...o, rest, viaEnv } : null;
}

addClosure(roots);
for (;;) {
  // Packages that own the interpreters of scripts join the set (with their closure).
  const want = new Set();
  for (const n of [...inSet]) {
    for (const s of scan(n).scripts) {
      const o = interpreterOf(s);
      if (o && !inSet.has(o.pkg)) want.add(o.pkg);
    }
  }
  if (want.size === 0) break;
  addClosure(sortBytes([...want]));
}
const names = sortBytes([...inSet]);
log(`generate.mjs: ${names.length} packages (${roots.length} roots), read ${(bytesRead / 1e6).toFixed(1)} MB`);

// Debian closure of a package, breadth first, sorted per level: the search order for libraries.
function debClosureOrder(name) {
  const order = [name];
  const seen = new Set(order);
  for (let i = 0; i < order.length; i++) {
    for (const d of installed.get(order[i]).debDeps) {
      if (inSet.has(d) && !seen.has(d)) {
        seen.add(d);
        order.push(d);
      }
    }
  }
  return order;
}

// soname (file name) -> [{ pkg, dir }] over the set.
const libIndex = new Map();
for (const n of names) {
  for (const [p, e] of scan(n).entries) {
    if (e.type === "directory") continue;
    const b = path.posix.basename(p);
    if (!b.includes(".so")) continue;
    if (!libIndex.has(b)) libIndex.set(b, []);
    libIndex.get(b).push({ pkg: n, dir: path.posix.dirname(p) });
  }
}

function isPerl(p) {
  return /^\/usr\/bin\/perl(5[0-9.]*)?$/.test(p);
}
// The module directories of Debian's @INC (without /usr/local) that packages of `name`'s closure
// hold files in: [[pkg, mapped dir]], in @INC order.
const PERL_INC = [
  /^\/etc\/perl$/,
  /^\/usr\/lib\/x86_64-linux-gnu\/perl5\/[0-9.]+$/,
  /^\/usr\/share\/perl5$/,
  /^\/usr\/lib\/x86_64-linux-gnu\/perl-base$/,
  /^\/usr\/lib\/x86_64-linux-gnu\/perl\/[0-9.]+$/,
  /^\/usr\/share\/perl\/[0-9.]+$/,
];
const perlIncCache = new Map();
function perlIncDirs(name) {
  if (perlIncCache.has(name)) return [...perlIncCache.get(name)];
  const found = PERL_INC.map(() => []);
  for (const p of debClosureOrder(name)) {
    const dirs = new Set();
    for (const [c, e] of scan(p).entries) {
      if (e.type === "directory") continue;
      for (let d = path.posix.dirname(c); d !== "/"; d = path.posix.dirname(d)) dirs.add(d);
    }
    for (const d of sortBytes([...dirs])) {
      const i = PERL_INC.findIndex((r) => r.test(d));
      if (i >= 0) found[i].push([p, mapPath(d)]);
    }
  }
  const out = found.flat();
  perlIncCache.set(name, out);
  return [...out];
}

function safeRealpath(p) {
  try {
    return fs.realpathSync(p);
  } catch {
    return p;
  }
}

// python3's interpreter (see the extras below): { pyver: "python3.11", bin: { pkg, path } } or null.
const python = (() => {
  if (!inSet.has("python3")) return null;
  let pyver = null;
  try {
    pyver = path.posix.basename(fs.readlinkSync("/usr/bin/python3"));
  } catch {}
  const bin = pyver && /^python3\.\d+$/.test(pyver) ? resolveOwned(`/usr/bin/${pyver}`) : null;
  return bin && inSet.has(bin.pkg) ? { pyver, bin } : null;
})();
// Scripts run by python3.X get the `python3` package's copy (which finds the standard library)
// when the script's package is python3 or depends on it.
function pythonOverride(name, o) {
  if (!python || !/^\/usr\/bin\/python3(\.[0-9]+)?$/.test(o.path)) return o;
  if (name !== "python3" && !debClosureOrder(name).includes("python3")) return o;
  return { ...o, pkg: "python3", path: o.path === "/usr/bin/python3" ? o.path : `/usr/bin/${python.pyver}` };
}

// ---- what each package wants from others -------------------------------------------------------

const warnings = [];
const plans = new Map(); // package -> { elfs, scripts, links, extras, wants: Map dep -> reason }

function owned(name, c) {
  return scan(name).entries.has(c);
}

for (const n of names) {
  const s = scan(n);
  const wants = new Map();
  const want = (dep, why) => {
    if (dep !== n && !wants.has(dep)) wants.set(dep, why);
  };
  const order = debClosureOrder(n);
  const orderIndex = new Map(order.map((x, i) => [x, i]));

  // ELF files: interpreter (libc6's loader) and RUNPATH (the directories of the DT_NEEDED libraries).
  const elfs = [];
  for (const e of s.elfs) {
    if (!e.hasDynamic && !e.interp) continue; // static
    const oldRunpath = (e.runpath || "").split(":").filter(Boolean);
    const originEntries = oldRunpath.filter((r) => r.includes("$ORIGIN"));
    const rpathDirs = oldRunpath.filter((r) => !r.includes("$ORIGIN")).map((r) => realDir(r));
    const isExecutable = !!e.interp && !e.soname;
    let interp = null;
    if (isExecutable) {
      const o = resolveOwned(safeRealpath(e.interp));
      if (o) {
        interp = [o.pkg, mapPath(o.path)];
        want(o.pkg, "interpreter");
      } else warnings.push(`${n}: ${e.path}: interpreter ${e.interp} not found`);
    }
    const runpath = [];
    const missing = [];
    for (const lib of [...e.needed, ...(DLOPENS.get(e.soname) || [])]) {
      if (ALWAYS_LOADED.has(lib)) continue;
      if (!isExecutable && LOADED_BEFORE_LIBRARIES.has(lib)) continue;
      if (lib.includes("/")) continue; // a path ($ORIGIN/...): loaded from there, not searched
      const cands = libIndex.get(lib) || [];
      const rank = (c) => {
        const i = rpathDirs.indexOf(c.dir);
        if (i >= 0) return i;
        const j = STANDARD_LIB_DIRS.indexOf(c.dir);
        return j >= 0 ? 100 + j : 1000;
      };
      let best = null;
      for (const c of cands) {
        const pi = orderIndex.has(c.pkg) ? orderIndex.get(c.pkg) : 1e6 + names.indexOf(c.pkg);
        const key = [pi, rank(c), c.dir];
        if (
          !best ||
          key[0] < best.key[0] ||
          (key[0] === best.key[0] &&
            (key[1] < best.key[1] || (key[1] === best.key[1] && byteCompare(key[2], best.key[2]) < 0)))
        ) {
          best = { c, key };
        }
      }
      if (!best) {
        missing.push(lib);
        continue;
      }
      if (!orderIndex.has(best.c.pkg))
        warnings.push(`${n}: ${e.path}: ${lib} found in ${best.c.pkg}, not a Debian dependency`);
      const entry = [best.c.pkg, mapPath(best.c.dir)];
      if (!runpath.some((r) => r[0] === entry[0] && r[1] === entry[1])) runpath.push(entry);
      want(best.c.pkg, `library ${lib}`);
    }
    if (missing.length) warnings.push(`${n}: ${e.path}: libraries not found: ${missing.join(" ")}`);
    const changeRunpath = runpath.length > 0 || oldRunpath.length > 0;
    if (!interp && !changeRunpath) continue;
    elfs.push({
      path: mapPath(e.path),
      interp,
      runpath: changeRunpath ? { origin: originEntries, dirs: runpath } : null,
    });
  }

  // Scripts: `#!` lines to the interpreter's store path.
  const scripts = [];
  for (const sc of s.scripts) {
    const o0 = interpreterOf(sc);
    const o = o0 && pythonOverride(n, o0);
    if (!o) {
      warnings.push(`${n}: ${sc.path}: interpreter of "#!${sc.interp} ${sc.rest}" not found, left as is`);
      continue;
    }
    const script = { path: mapPath(sc.path), len: sc.len, interp: [o.pkg, mapPath(o.path)], rest: o.rest };
    want(o.pkg, `interpreter ${sc.interp}${o.viaEnv ? " " + mapPath(o.path) : ""}`);
    if (isPerl(o.path)) {
      // Debian's perl looks for modules in /usr/share/perl5 etc. only: `-I` for each module
      // directory of the script's closure, on the #! line, where perl reads it (even past the
      // kernel's 255-byte limit). Perl prepends them one by one, so they go in reverse order.
      script.perlInc = perlIncDirs(n).reverse();
      for (const [d] of script.perlInc) want(d, "perl modules");
    }
    scripts.push(script);
  }

  // Symlinks: same package -> relative in the new layout; another package's file -> absolute
  // store path; anything else -> the host path it meant (absolute).
  const links = [];
  for (const [c, e] of s.entries) {
    if (e.type !== "symlink") continue;
    const t = e.target;
    const abs = t.startsWith("/") ? path.posix.normalize(t) : path.posix.join(path.posix.dirname(c), t);
    const tc = canon(abs);
    let newTarget;
    if (owned(n, tc)) {
      newTarget = { rel: path.posix.relative(path.posix.dirname(mapPath(c)), mapPath(tc)) || "." };
    } else {
      const o = resolveOwned(abs);
      if (o && o.pkg !== n && inSet.has(o.pkg) && owned(o.pkg, o.path)) {
        newTarget = { pkg: o.pkg, target: mapPath(o.path), abs };
        want(o.pkg, `symlink ${mapPath(c)}`);
      } else if (o && o.pkg === n && owned(n, o.path)) {
        newTarget = { rel: path.posix.relative(path.posix.dirname(mapPath(c)), mapPath(o.path)) || "." };
      } else {
        newTarget = { abs };
      }
    }
    if (newTarget.rel !== undefined && newTarget.rel === t) continue; // unchanged
    if (newTarget.pkg === undefined && newTarget.abs !== undefined && newTarget.abs === t) continue;
    links.push({ path: mapPath(c), host: c, ...newTarget });
  }

  links.sort((x, y) => byteCompare(x.path, y.path));

  // Hard links inside the package (perl and perl5.36.0...): Nix stores each name as a copy, so the
  // later names (sorted) become symlinks to the first, which keeps the sharing the host has.
  const extras = [];
  const firstOfInode = new Map();
  for (const c of sortBytes([...s.entries.keys()])) {
    const e = s.entries.get(c);
    if (e.type !== "regular" || !e.inode) continue;
    const first = firstOfInode.get(e.inode);
    if (!first) {
      firstOfInode.set(e.inode, c);
      continue;
    }
    extras.push({
      op: "link",
      path: mapPath(c),
      rel: path.posix.relative(path.posix.dirname(mapPath(c)), mapPath(first)),
    });
  }

  plans.set(n, { elfs, scripts, links, extras, wants });
}

// ---- extras: python3's prefix, bash's sh -------------------------------------------------------

// python3: Python finds its standard library from the real location of its executable
// (lib/python3.X next to bin/), so `python3` gets its own copy of the interpreter and
// lib/python3.X + lib/python3 trees of symlinks into the packages of its closure that hold them
// (libpython3.X-minimal, libpython3.X-stdlib, python3-* modules), like nixpkgs' python envs.
function mergeTree(name, dirs, plan) {
  const order = debClosureOrder(name);
  for (const dir of dirs) {
    // child path (canonical) -> [{ pkg, type }]
    const sources = new Map();
    for (const p of order) {
      for (const [c, e] of scan(p).entries) {
        if (c === dir || !c.startsWith(dir + "/")) continue;
        if (!sources.has(c)) sources.set(c, []);
        sources.get(c).push({ pkg: p, type: e.type });
      }
    }
    if (sources.size === 0) continue;
    const linked = new Set(); // canonical paths made a symlink (their children are covered)
    for (const c of sortBytes([...sources.keys()])) {
      let covered = false;
      for (let a = path.posix.dirname(c); a !== dir && a !== "/"; a = path.posix.dirname(a)) {
        if (linked.has(a)) {
          covered = true;
          break;
        }
      }
      if (covered) continue;
      const srcs = sources.get(c);
      const own = srcs.find((x) => x.pkg === name);
      if (own) continue; // the package's own file or directory is already there
      const dirsOnly = srcs.every((x) => x.type === "directory");
      if (dirsOnly && srcs.length > 1) {
        plan.extras.push({ op: "mkdir", path: mapPath(c) });
        continue;
      }
      const first = srcs[0];
      plan.extras.push({ op: "link", path: mapPath(c), pkg: first.pkg, target: mapPath(c), abs: c });
      plan.wants.set(first.pkg, plan.wants.get(first.pkg) || `merged ${mapPath(dir)}`);
      linked.add(c);
    }
    // the directory itself
    plan.extras.unshift({ op: "mkdir", path: mapPath(dir) });
  }
}

if (inSet.has("python3")) {
  if (!python) {
    warnings.push("python3: /usr/bin/python3 does not lead to an installed python3.X: no prefix made");
  } else {
    const { pyver, bin } = python;
    const plan = plans.get("python3");
    plan.extras.push({ op: "mkdir", path: "bin" });
    plan.extras.push({ op: "copy", pkg: bin.pkg, from: mapPath(bin.path), to: `bin/${pyver}` });
    plan.extras.push({ op: "link", path: "bin/python3", rel: pyver });
    plan.wants.set(bin.pkg, plan.wants.get(bin.pkg) || "python interpreter");
    mergeTree("python3", [`/usr/lib/${pyver}`, "/usr/lib/python3"], plan);
  }
}
// bash: a `bin/sh` like nixpkgs' bash (programs run /bin/sh; dash is not in bash's closure).
if (inSet.has("bash") && !owned("bash", "/usr/bin/sh")) {
  plans.get("bash").extras.push({ op: "link", path: "bin/sh", rel: "bash" });
}
// Wrappers (like nixpkgs' makeWrapper) for programs whose compiled-in /usr paths matter beyond
// `--version`: a `#!` script run by dash. Lines are lists of strings and [pkg, path] references.
const sh = resolveOwned("/bin/sh", false);
function addWrapper(name, file, lines, why) {
  if (!sh || !inSet.has(sh.pkg)) {
    warnings.push(`${name}: no /bin/sh in the set: no wrapper ${file}`);
    return;
  }
  const plan = plans.get(name);
  plan.extras.push({ op: "write", path: file, mode: "555", lines: [["#!", [sh.pkg, mapPath(sh.path)]], ...lines] });
  plan.wants.set(sh.pkg, plan.wants.get(sh.pkg) || `wrapper ${file}`);
  for (const l of lines) {
    for (const seg of l)
      if (Array.isArray(seg) && seg[0] !== name) plan.wants.set(seg[0], plan.wants.get(seg[0]) || why);
  }
}
// perl: Debian's perl has its module directories compiled in; bin/perl passes -I for each module
// directory of perl's closure (perl-base's bin/perl stays the real program).
if (inSet.has("perl") && !owned("perl", "/usr/bin/perl")) {
  const perlBin = resolveOwned("/usr/bin/perl");
  if (perlBin && inSet.has(perlBin.pkg)) {
    const incs = perlIncDirs("perl").flatMap(([p, d]) => [" -I", [p, d]]);
    addWrapper(
      "perl",
      "bin/perl",
      [
        ["# Debian's perl with the module directories of its closure (it has /usr/share/perl5... compiled in)"],
        ["exec ", [perlBin.pkg, mapPath(perlBin.path)], ...incs, ' "$@"'],
      ],
      "perl modules",
    );
  }
}
// git: Debian's git has /usr/lib/git-core (programs such as git-remote-https) and its templates
// compiled in; bin/git sets GIT_EXEC_PATH and GIT_TEMPLATE_DIR to the store's (unless set).
if (inSet.has("git") && owned("git", "/usr/lib/git-core/git")) {
  const self = (p) => ["git", p];
  addWrapper(
    "git",
    "bin/git",
    [
      ["# Debian's git, with its exec path and templates in the store (it has /usr/lib/git-core compiled in)"],
      ["GIT_EXEC_PATH=${GIT_EXEC_PATH:-", self("lib/git-core"), "}"],
      ["GIT_TEMPLATE_DIR=${GIT_TEMPLATE_DIR:-", self("share/git-core/templates"), "}"],
      ["export GIT_EXEC_PATH GIT_TEMPLATE_DIR"],
      ["exec ", self("lib/git-core/git"), ' "$@"'],
    ],
    "git",
  );
}

// ---- cycles ------------------------------------------------------------------------------------

// edges: package -> Map(dep -> 'deb' | 'need' | 'both')
const edges = new Map();
for (const n of names) {
  const m = new Map();
  for (const d of installed.get(n).debDeps) if (inSet.has(d)) m.set(d, "deb");
  for (const d of plans.get(n).wants.keys()) if (d !== n) m.set(d, m.has(d) ? "both" : "need");
  edges.set(n, m);
}

function tarjan() {
  let index = 0;
  const idx = new Map(),
    low = new Map(),
    onStack = new Set(),
    stack = [],
    out = [];
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of sortBytes([...edges.get(v).keys()])) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const c = [];
      let w;
      do {
        w = stack.pop();
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      out.push(sortBytes(c));
    }
  };
  for (const v of names) if (!idx.has(v)) strong(v);
  return out;
}

// Inside each strongly connected component: keep every edge a rewrite needs (if those alone form
// a cycle, drop the back edges of a depth-first walk first), then add the Debian-only edges one by
// one, in sorted order, skipping each that would close a cycle.
const dropped = [];
for (const scc of tarjan().filter((c) => c.length > 1)) {
  const inside = new Set(scc);
  const debOnly = [];
  for (const m of scc) {
    for (const [d, kind] of [...edges.get(m)]) {
      if (inside.has(d) && kind === "deb") {
        edges.get(m).delete(d);
        debOnly.push([m, d]);
      }
    }
  }
  const state = new Map();
  const walk = (v) => {
    state.set(v, 1);
    for (const w of sortBytes([...edges.get(v).keys()])) {
      if (!inside.has(w)) continue;
      if (state.get(w) === 1) {
        edges.get(v).delete(w);
        dropped.push({ from: v, to: w, kind: plans.get(v).wants.get(w) || "dependency" });
      } else if (!state.has(w)) walk(w);
    }
    state.set(v, 2);
  };
  for (const m of scc) if (!state.has(m)) walk(m);
  const reaches = (from, to) => {
    const seen = new Set([from]);
    const stack = [from];
    while (stack.length) {
      const v = stack.pop();
      if (v === to) return true;
      for (const w of edges.get(v).keys())
        if (inside.has(w) && !seen.has(w)) {
          seen.add(w);
          stack.push(w);
        }
    }
    return false;
  };
  for (const [m, d] of debOnly) {
    if (reaches(d, m)) dropped.push({ from: m, to: d, kind: "Debian dependency" });
    else edges.get(m).set(d, "deb");
  }
}
if (tarjan().some((c) => c.length > 1)) die("internal error: the dependency graph still has a cycle");
for (const d of dropped) warnings.push(`cycle: dropped ${d.from} -> ${d.to} (${d.kind})`);

// ---- output ------------------------------------------------------------------------------------

const sanitizeStore = (s) => s.replace(/[^A-Za-z0-9+._?=-]/g, "_");
// Store names: the Debian version without its epoch ("1:2.39.5-0+deb12u3" -> "2.39.5-0+deb12u3").
const storeVersion = (v) => sanitizeStore(v.replace(/^[0-9]+:/, ""));
function attrName(deb) {
  let a = deb.replace(/\+/g, "x").replace(/\./g, "_");
  if (/^[0-9]/.test(a)) a = "_" + a;
  return a;
}
const attrs = new Map();
for (const n of names) {
  const a = attrName(n);
  if (attrs.has(a)) die(`attribute name ${a} is taken by both ${attrs.get(a)} and ${n}`);
  attrs.set(a, n);
}

const packages = {};
for (const n of names) {
  const p = installed.get(n);
  const s = scan(n);
  const plan = plans.get(n);
  const deps = edges.get(n);
  const ok = (dep) => dep === n || deps.has(dep);
  const ops = [];
  const replaced = new Set();
  for (const x of plan.extras) {
    if (x.pkg && !ok(x.pkg)) continue;
    if (x.op === "write" && !x.lines.every((l) => l.every((seg) => !Array.isArray(seg) || ok(seg[0])))) {
      warnings.push(`${n}: ${x.path}: not written (a package it needs was dropped by a cycle)`);
      continue;
    }
    if (x.op !== "mkdir") replaced.add(x.path);
    ops.push(x);
  }
  for (const l of plan.links) {
    if (replaced.has(l.path)) continue;
    if (l.pkg && !ok(l.pkg)) {
      if (l.abs !== s.entries.get(l.host).target) ops.push({ op: "link", path: l.path, abs: l.abs });
      continue;
    }
    const { host, ...rest } = l;
    void host;
    ops.push({ op: "link", ...rest });
  }
  for (const e of plan.elfs) {
    if (replaced.has(e.path)) continue;
    const interp = e.interp && ok(e.interp[0]) ? e.interp : null;
    let runpath = null;
    if (e.runpath) {
      const dirs = e.runpath.dirs.filter((r) => ok(r[0]));
      runpath = { origin: e.runpath.origin, dirs };
    }
    if (!interp && !runpath) continue;
    ops.push({ op: "elf", path: e.path, interp, runpath });
  }
  for (const sc of plan.scripts) {
    if (!ok(sc.interp[0]) || replaced.has(sc.path)) continue;
    const op = { op: "shebang", path: sc.path, len: sc.len, interp: sc.interp, rest: sc.rest };
    if (sc.perlInc) op.perlInc = sc.perlInc.filter(([d]) => ok(d));
    ops.push(op);
  }
  const files = sortBytes([...s.entries.keys()]);
  // dpkg's checksums of the package's files: default.nix compares them, so that an upgraded
  // package says "generate again" instead of Nix's "store path mismatch".
  let md5sums = null;
  for (const f of [p.listName, p.name]) {
    const file = path.join(ADMINDIR, "info", `${f}.md5sums`);
    if (fs.existsSync(file)) {
      md5sums = { path: file, sha256: crypto.createHash("sha256").update(fs.readFileSync(file)).digest("hex") };
      break;
    }
  }
  packages[n] = {
    attr: attrName(n),
    version: p.version,
    storeName: `${sanitizeStore(n)}-${storeVersion(p.version)}`,
    narHash: s.narHash,
    md5sums,
    size: s.size,
    debianDeps: p.debDeps.filter((d) => inSet.has(d)),
    deps: sortBytes([...deps.keys()]),
    ops,
    files,
  };
  if (s.skipped.missing) warnings.push(`${n}: ${s.skipped.missing} listed files are missing on disk`);
}

// The CA bundle: generated by update-ca-certificates, owned by no package.
const bundlePath = "/etc/ssl/certs/ca-certificates.crt";
const bundleReal = safeRealpath(bundlePath);
if (!lstatOrNull(bundleReal) || !fs.statSync(bundleReal).isFile()) {
  die(`${bundlePath} is missing (ca-certificates installed but not configured? run update-ca-certificates)`);
}
const bundle = fs.readFileSync(bundleReal);

const aliases = {};
for (const [a, deb] of ALIASES) if (inSet.has(deb)) aliases[a] = deb;

const result = {
  version: FORMAT_VERSION,
  system: SYSTEM,
  dpkgArchitecture: DPKG_ARCH,
  excluded: EXCLUDE,
  roots: sortBytes([...new Set(roots)]),
  aliases,
  tools: {
    busybox: {
      pkg: "busybox-static",
      path: "/usr/bin/busybox",
      storeName: `busybox-${storeVersion(installed.get("busybox-static").version)}`,
    },
    patchelf: { pkg: "patchelf", path: "/usr/bin/patchelf" },
    loader: { pkg: "libc6", path: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" },
    libraryPath: [
      ["libc6", "/usr/lib/x86_64-linux-gnu"],
      ["libstdc++6", "/usr/lib/x86_64-linux-gnu"],
      ["libgcc-s1", "/usr/lib/x86_64-linux-gnu"],
    ],
  },
  cacert: {
    version: installed.get("ca-certificates").version,
    storeName: `cacert-${storeVersion(installed.get("ca-certificates").version)}`,
    path: bundleReal,
    sha256: crypto.createHash("sha256").update(bundle).digest("hex"),
  },
  warnings,
  packages,
};
for (const [k, t] of Object.entries(result.tools)) {
  if (k === "libraryPath") {
    for (const [p, d] of t) if (!owned(p, d)) die(`tool directory ${d} is not in ${p}`);
    continue;
  }
  if (!owned(t.pkg, t.path)) die(`tool ${t.path} is not in package ${t.pkg}`);
}

fs.mkdirSync(opts.out, { recursive: true });
const write = (f, data) => {
  const dest = path.join(opts.out, f);
  const tmp = `${dest}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, dest);
};
// One line per top-level field and per package (diffable, still compact).
const { packages: pkgsOut, ...head } = result;
const lines = Object.entries(head).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
const pkgLines = Object.entries(pkgsOut).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
write("packages.json", `{${lines.join(",\n")},\n"packages":{\n${pkgLines.join(",\n")}\n}}\n`);
// Popularity for layering, in Nixery's format ({"<store name>": count}): how many installed packages need
// each package of the set, directly or not. The builder reads popularity.json beside the package set.
{
  const closureOf = new Map();
  const closure = (name) => {
    if (closureOf.has(name)) return closureOf.get(name);
    const seen = new Set();
    closureOf.set(name, seen); // a dependency cycle ends here instead of recursing forever
    for (const d of installed.get(name).debDeps) {
      seen.add(d);
      for (const x of closure(d)) seen.add(x);
    }
    return seen;
  };
  const counts = new Map();
  for (const name of installed.keys()) for (const d of closure(name)) counts.set(d, (counts.get(d) ?? 0) + 1);
  const popularity = {};
  for (const [name, p] of Object.entries(packages)) popularity[p.storeName] = counts.get(name) ?? 0;
  popularity[result.cacert.storeName] = counts.get("ca-certificates") ?? 0;
  const sorted = Object.fromEntries(Object.entries(popularity).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  write("popularity.json", JSON.stringify(sorted, null, 0) + "\n");
}
if (path.resolve(opts.out) !== path.resolve(HERE)) {
  for (const f of ["default.nix", "build-package.sh"]) write(f, fs.readFileSync(path.join(HERE, f)));
}

const ms = Number(process.hrtime.bigint() - t0) / 1e6;
const total = names.reduce((a, n) => a + scan(n).size, 0);
log(
  `generate.mjs: wrote ${path.join(opts.out, "packages.json")}: ${names.length} packages, ${(total / 1e6).toFixed(1)} MB of files, ` +
    `${warnings.length} warnings, ${ms.toFixed(0)} ms`,
);
