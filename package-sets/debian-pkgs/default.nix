# A realistic offline package set: the Debian packages installed on the build machine, one store
# path per package, with their real files and dependency graph. See README.md.
#
# This file is the Nix side; `node package-sets/debian-pkgs/generate.mjs` writes packages.json (read from
# dpkg's database and the files on disk) and copies this file and build-package.sh next to it, into
# package-sets/debian-pkgs/generated/ by default. That folder is the package set:
#
#   import ./generated { system = "x86_64-linux"; }
#   NIXERY_PKGS_PATH=/abs/path/package-sets/debian-pkgs/generated
#
# Attributes: nixpkgs-like names (curl, git, python3, bashInteractive, cacert, iana-etc, busybox,
# ...: packages.json's `aliases`) and every Debian package of the set under `debian.<name>`
# (`.` -> `_`, `+` -> `x`: debian.libstdcxx6, debian.python3_11).
#
# Each `debian.<name>`: builtins.path imports the package's files from the host (filtered by the
# file list, and pinned by the NAR hash the generator computed, so Nix reads nothing when the import
# is already in the store and refuses files that changed since); build-package.sh, run by Debian's
# static busybox, copies them in Nix's layout (/usr/bin -> bin, /usr/lib -> lib, /etc -> etc),
# patches ELF files with patchelf (interpreter: libc6's loader; RUNPATH: the directories of the
# libraries they need), rewrites `#!` lines and symlinks to store paths, and lists the package's
# dependencies in nix-support/debian-depends (so each is a store reference).
{ system ? builtins.currentSystem, ... }:

let
  inherit (builtins)
    attrNames concatStringsSep elemAt hasAttr listToAttrs map mapAttrs pathExists readFile
    removeAttrs stringLength substring toString isString;

  jsonFile = ./packages.json;

  data =
    if pathExists jsonFile then builtins.fromJSON (readFile jsonFile)
    else throw (
      "package-sets/debian-pkgs: packages.json is missing next to default.nix. This package set is generated "
      + "from the machine's installed Debian packages: run `node package-sets/debian-pkgs/generate.mjs` "
      + "(it writes package-sets/debian-pkgs/generated/, holding default.nix and packages.json) and use that "
      + "folder as the package set (see package-sets/debian-pkgs/README.md).");

  set =
    if data.version or null != 1 then
      throw "package-sets/debian-pkgs: packages.json has format version ${toString (data.version or "?")}, this default.nix reads version 1: run generate.mjs again"
    else if system != data.system then
      throw ("package-sets/debian-pkgs: this package set is made of the build machine's installed Debian "
        + "packages, which are ${data.system} binaries; it has nothing for ${system}")
    else data;

  pkgData = set.packages;

  # Nix 2.8 calls the filter with "//usr/bin" for children of "/".
  normalise = p: if substring 0 2 p == "//" then substring 1 (stringLength p) p else p;

  # A package's files as they are on the host (canonical paths: /usr/bin/curl, not /bin/curl).
  srcs = mapAttrs
    (name: p:
      let
        keep = listToAttrs (map (f: { name = f; value = true; }) p.files);
        changed = p.md5sums != null
          && (!pathExists (/. + p.md5sums.path) || builtins.hashFile "sha256" (/. + p.md5sums.path) != p.md5sums.sha256);
      in
      if changed then
        throw ("package-sets/debian-pkgs: the Debian package ${name} (${p.version} in packages.json) has changed on this "
          + "machine since packages.json was generated (${p.md5sums.path}); generate the set again: "
          + "node package-sets/debian-pkgs/generate.mjs")
      else builtins.path {
        path = /.;
        name = "debian-files-${p.storeName}";
        filter = path: type: hasAttr (normalise path) keep;
        sha256 = p.narHash;
      })
    pkgData;

  hostFile = pkg: file: "${srcs.${pkg}}${file}";
  bootBusybox = hostFile set.tools.busybox.pkg set.tools.busybox.path;
  patchelf = concatStringsSep " " [
    (hostFile set.tools.loader.pkg set.tools.loader.path)
    "--library-path"
    (concatStringsSep ":" (map (l: hostFile (elemAt l 0) (elemAt l 1)) set.tools.libraryPath))
    (hostFile set.tools.patchelf.pkg set.tools.patchelf.path)
  ];

  # busybox with a link per applet (like nixpkgs' busybox); its bin/ is every builder's PATH.
  busybox = derivation {
    name = set.tools.busybox.storeName;
    inherit system;
    builder = bootBusybox;
    args = [ "sh" "-ec" ''
      bb=${bootBusybox}
      $bb mkdir -p $out/bin
      $bb cp $bb $out/bin/busybox
      for applet in $($bb --list); do
        case $applet in busybox) continue ;; esac
        $bb ln -s busybox $out/bin/$applet
      done
    '' ];
  };

  # A file of another package (or of this one: placeholder) in the plan.
  ref = name: pkg: file: "${if pkg == name then builtins.placeholder "out" else byDebianName.${pkg}}/${file}";
  linkTarget = name: o:
    if o ? rel then o.rel
    else if o ? pkg then ref name o.pkg o.target
    else o.abs;
  runpath = name: r:
    if r == null then "="
    else
      let entries = r.origin ++ map (d: ref name (elemAt d 0) (elemAt d 1)) r.dirs;
      in if entries == [ ] then "-" else concatStringsSep ":" entries;
  opLine = name: o:
    if o.op == "mkdir" then "mkdir\t${o.path}"
    else if o.op == "copy" then "copy\t${ref name o.pkg o.from}\t${o.to}"
    else if o.op == "link" then "link\t${o.path}\t${linkTarget name o}"
    else if o.op == "elf" then
      "elf\t${o.path}\t${if o.interp == null then "-" else ref name (elemAt o.interp 0) (elemAt o.interp 1)}\t${runpath name o.runpath}"
    else if o.op == "shebang" then
      "shebang\t${o.path}\t${toString o.len}\t#!${ref name (elemAt o.interp 0) (elemAt o.interp 1)}${if o.rest == "" then "" else " " + o.rest}"
      + concatStringsSep "" (map (d: " -I${ref name (elemAt d 0) (elemAt d 1)}") (o.perlInc or [ ]))
    else if o.op == "write" then
      concatStringsSep "\n" ([ "write\t${o.path}\t${o.mode}" ]
        ++ map (l: "line\t" + concatStringsSep "" (map (seg: if isString seg then seg else ref name (elemAt seg 0) (elemAt seg 1)) l)) o.lines)
    else throw "package-sets/debian-pkgs: unknown operation ${o.op} in packages.json";

  # A benchmark's cold builds set "salt" in packages.json: every package then gets new store paths, built
  # afresh, without touching the store paths anything else uses.
  salted = if set ? salt then { benchmarkSalt = set.salt; } else { };

  mkDebian = name: p: derivation (salted // {
    name = p.storeName;
    inherit system;
    builder = bootBusybox;
    args = [ "sh" "-e" ./build-package.sh ];
    PATH = "${busybox}/bin";
    src = srcs.${name};
    inherit patchelf;
    plan = concatStringsSep "\n" (map (d: "dep\t${byDebianName.${d}}") p.deps ++ map (opLine name) p.ops) + "\n";
    passAsFile = [ "plan" ];
    debianPackage = name;
    debianVersion = p.version;
  });

  byDebianName = mapAttrs mkDebian pkgData;
  debian = listToAttrs (map (n: { name = pkgData.${n}.attr; value = byDebianName.${n}; }) (attrNames pkgData));

  # The CA bundle, where nixpkgs' cacert has it (and Debian's name for it, which curl and openssl
  # were built with). It is generated by update-ca-certificates, so no package owns it.
  cacert = derivation {
    name = set.cacert.storeName;
    inherit system;
    builder = bootBusybox;
    PATH = "${busybox}/bin";
    bundle = builtins.path {
      path = /. + set.cacert.path;
      name = "ca-bundle.crt";
      recursive = false;
      sha256 = set.cacert.sha256;
    };
    args = [ "sh" "-ec" ''
      mkdir -p $out/etc/ssl/certs
      cp $bundle $out/etc/ssl/certs/ca-bundle.crt
      ln -s ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
    '' ];
  };

  aliases = mapAttrs (a: deb: byDebianName.${deb}) (removeAttrs set.aliases [ "busybox" "cacert" ]);
in
aliases // { inherit busybox cacert debian; }
