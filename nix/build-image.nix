# What the builder service asks Nix: which packages a name means (`resolve`), and the image's
# metadata, built (`image`). See nix/README.md for the full contract.
#
#   nix-instantiate --eval --strict --json nix/build-image.nix -A resolve ARGS
#   nix-build nix/build-image.nix -A image --no-out-link ARGS
#   ARGS = --argstr packages '["hello","tools.greet"]'
#          --argstr source '{"kind":"path","path":"/abs/dir"}'
#          --argstr system x86_64-linux
#
# Every argument is a string parsed with builtins.fromJSON: user input is data, never Nix code.
{ packages ? "[]"
, source ? ""
, system ? builtins.currentSystem
}:

let
  inherit (builtins)
    all any attrNames concatStringsSep elem filter foldl' fromJSON head isAttrs isList isString
    listToAttrs map match replaceStrings sort substring tail tryEval;

  fail = msg: throw "build-image.nix: ${msg}";

  # ---- arguments -------------------------------------------------------------------------------

  requested =
    let v = fromJSON packages;
    in if isList v && all isString v then v
       else fail "packages must be a JSON list of strings";

  src =
    let v = if source == "" then fail "source is required" else fromJSON source;
    in if isAttrs v && v ? kind && isString v.kind then v
       else fail "source must be a JSON object with a string `kind`";

  targetSystem =
    if elem system [ "x86_64-linux" "aarch64-linux" ] then system
    else fail "system must be x86_64-linux or aarch64-linux, not ${builtins.toJSON system}";

  srcString = name:
    if src ? ${name} && isString src.${name} then src.${name}
    else fail "a source of kind ${src.kind} needs a string `${name}`";

  # The package set's directory (or file).
  srcPath =
    if src.kind == "path" then
      let p = srcString "path";
      in if substring 0 1 p == "/" then /. + p
         else fail "a path source needs an absolute path"
    else if src.kind == "tarball" then
      # A nixpkgs channel tarball (nixexprs.tar.xz) or a GitHub archive; sha256 pins it.
      builtins.fetchTarball ({ url = srcString "url"; }
        // (if src ? sha256 then { sha256 = srcString "sha256"; } else { }))
    else if src.kind == "git" then
      let rev = srcString "rev";
      in if match "[0-9a-f]{40}" rev == null then fail "a git source needs a 40-hex `rev`"
         else builtins.fetchGit ({
           url = srcString "url";
           inherit rev;
           # A commit on any branch must be found; without allRefs Nix fetches only `ref`
           # (default HEAD). Nix 2.8 accepts allRefs (checked), though with a local file:// repo a
           # commit on another branch was found even without it.
           allRefs = true;
         } // (if src ? ref then { ref = srcString "ref"; } else { }))
    else fail "unknown source kind ${builtins.toJSON src.kind} (path, tarball or git)";

  importSet = sys: import srcPath { system = sys; config = { }; overlays = [ ]; };
  pkgs = importSet targetSystem;

  # Forced before anything is looked up: a bad argument or a package set that fails to import is
  # an error, not a list of unknown packages (lookups run under tryEval, which would hide it).
  argumentsOk =
    builtins.seq targetSystem (builtins.seq (builtins.length requested)
      (isAttrs pkgs || fail "the package set is not an attribute set"));
  # The metadata step runs where Nix runs, whatever the image's system.
  buildPkgs = if targetSystem == builtins.currentSystem then pkgs else importSet builtins.currentSystem;

  # ---- resolution ------------------------------------------------------------------------------

  # tryEval catches `throw` and failed `assert`s (nixpkgs aliases throw); a false result and an
  # error are both "no".
  holds = e: let r = tryEval e; in r.success && r.value;
  isSet = v: holds (isAttrs v);
  isDerivation = v: holds (isAttrs v && (v.type or null) == "derivation");

  lower = replaceStrings
    [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ]
    [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];

  # The attribute of `set` that `name` means, or null: the exact name; else a case-insensitive
  # match (attrNames is sorted, so the first is the lexicographically first); else, for a name
  # that starts with a digit, the same with nixpkgs' `_` prefix.
  pickName = set: name:
    let
      insensitive = n:
        let l = lower n; found = filter (a: lower a == l) (attrNames set);
        in if found == [ ] then null else head found;
      exactOrInsensitive = n: if set ? ${n} then n else insensitive n;
      direct = exactOrInsensitive name;
    in
    if direct != null then direct
    else if match "[0-9].*" name != null then exactOrInsensitive "_${name}"
    else null;

  # "a.b.c" -> { path = [ "a" "b" "c" ] (as found); value; } or null.
  lookup = name:
    let
      walk = value: path: rest:
        if rest == [ ] then { inherit path value; }
        else if !(isSet value) then null
        else
          let n = pickName value (head rest);
          in if n == null then null else walk value.${n} (path ++ [ n ]) (tail rest);
      components = filter isString (builtins.split "[.]" name);
      found = walk pkgs [ ] components;
    in
    if found != null && isDerivation found.value then found else null;

  lookups = map (name: { inherit name; found = lookup name; }) requested;
  known = filter (l: l.found != null) lookups;
  unknownNames = attrNames (listToAttrs
    (map (l: { inherit (l) name; value = true; }) (filter (l: l.found == null) lookups)));

  resolve = assert argumentsOk; {
    resolved = listToAttrs (map (l: { inherit (l) name; value = concatStringsSep "." l.found.path; }) known);
    unknown = unknownNames; # attrNames: sorted and deduplicated
  };

  # ---- image -----------------------------------------------------------------------------------

  alwaysAdded = filter (n: pkgs ? ${n} && isDerivation pkgs.${n}) [ "cacert" "iana-etc" ];

  requestedOutputs = listToAttrs (map (l: { inherit (l) name; value = l.found.value.outPath; }) known);
  packageOutputs = listToAttrs (map (n: { name = n; value = pkgs.${n}.outPath; }) alwaysAdded)
    // requestedOutputs;

  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  topLevel = unique (map (n: packageOutputs.${n}) (sort builtins.lessThan (attrNames requestedOutputs) ++ alwaysAdded));

  # /usr/bin/env comes from the coreutils package when it is in the image.
  coreutilsOutputs = map (l: l.found.value.outPath) (filter (l: l.found.path == [ "coreutils" ]) known);
  envFrom = if coreutilsOutputs == [ ] then "" else head coreutilsOutputs;

  busyboxBin =
    if buildPkgs ? busybox && isDerivation buildPkgs.busybox then "${buildPkgs.busybox}/bin/busybox"
    else if builtins.pathExists /usr/bin/busybox then
      "${builtins.path { path = /usr/bin; name = "busybox"; filter = p: t: baseNameOf p == "busybox"; }}/busybox"
    else fail "the package set has no busybox and the host has no /usr/bin/busybox";

  meta = builtins.toJSON {
    version = 1;
    system = targetSystem;
    packages = packageOutputs;
    resolved = resolve.resolved;
    inherit topLevel;
  };

  image =
    assert argumentsOk;
    if unknownNames != [ ] then fail "unknown packages: ${concatStringsSep ", " unknownNames}"
    else derivation {
      name = "image-metadata";
      system = builtins.currentSystem;
      builder = busyboxBin;
      args = [ "sh" "-e" "${./image-metadata.sh}" busyboxBin envFrom meta ] ++ topLevel;
      __structuredAttrs = true;
      exportReferencesGraph.graph = topLevel;
    };
in
{
  inherit resolve image;
}
