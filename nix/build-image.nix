# What the builder service asks Nix: the Nix a package set needs (`requirements`), which packages a
# name means (`resolve`, `explain`), the set's names for the front page's checks (`index`, `renamed`), and
# the image's closure and metadata, built (`image`). See
# README.md in this folder for the contract. The root filesystem is the builder's (root-filesystem.ts).
#
#   nix-instantiate --eval --strict --json nix/build-image.nix -A requirements ARGS
#   nix-instantiate --eval --strict --json nix/build-image.nix -A resolve ARGS
#   nix-instantiate --eval --strict --json nix/build-image.nix -A explain ARGS
#   nix-instantiate --eval --strict --json nix/build-image.nix -A index ARGS      (the set's names and aliases)
#   nix-instantiate --eval --strict --json nix/build-image.nix -A renamed ARGS    (what each alias stands for)
#   nix-instantiate --eval --strict --json nix/build-image.nix -A roots ARGS      (the closure's roots, unbuilt)
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
    else fail "unknown source kind ${builtins.toJSON src.kind} (path or tarball)";

  # ---- the Nix the package set needs ------------------------------------------------------------

  # nixpkgs and its forks name their minimum Nix in lib/minver.nix, and their default.nix aborts on an
  # older one (an abort that tryEval cannot catch), so this is read before the set is imported.
  minverFile = srcPath + "/lib/minver.nix";
  minNixVersion =
    if builtins.pathExists minverFile then
      let v = import minverFile;
      in if isString v then v else fail "lib/minver.nix of the package set is not a version string"
    else null;
  satisfied = minNixVersion == null || builtins.compareVersions builtins.nixVersion minNixVersion >= 0;
  requirements = {
    inherit minNixVersion satisfied;
    nixVersion = builtins.nixVersion;
  };
  # The builder checks `requirements` first; this keeps any other path from reaching nixpkgs' abort.
  # The message starts with a fixed marker that the builder recognises.
  nixNewEnough = satisfied
    || fail "nix-too-old: the package set needs Nix >= ${minNixVersion}, and this is Nix ${builtins.nixVersion}";

  importSet = sys: import srcPath { system = sys; config = { }; overlays = [ ]; };
  pkgs = importSet targetSystem;

  # Forced before anything is looked up: a bad argument or a package set that fails to import is
  # an error, not a list of unknown packages (lookups run under tryEval, which would hide it).
  argumentsOk =
    builtins.seq targetSystem (builtins.seq (builtins.length requested) (builtins.seq nixNewEnough
      (isAttrs pkgs || fail "the package set is not an attribute set")));
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

  # "a.b.c" -> { path = [ "a" "b" "c" ] (as found); value; } or null. A value that throws when
  # forced (an alias) is still returned: `classify` tells it apart.
  walkName = name:
    let
      walk = value: path: rest:
        if rest == [ ] then { inherit path value; }
        else if !(isSet value) then null
        else
          let n = pickName value (head rest);
          in if n == null then null else walk value.${n} (path ++ [ n ]) (tail rest);
    in
    walk pkgs [ ] (filter isString (builtins.split "[.]" name));

  # Why nixpkgs would refuse a derivation whose drvPath throws (check-meta.nix): read from its meta,
  # each read under tryEval. "refused" when the reason is none of these.
  refusal = d:
    let
      r = tryEval (if isAttrs (d.meta or null) then d.meta else { });
      m = if r.success then r.value else { };
      license = m.license or { };
      licenses = if isList license then license else [ license ];
      unfree = any (l: holds (isAttrs l && (l.free or true) == false)) licenses;
    in
    if holds (m.broken or false) then "broken"
    else if holds ((m.knownVulnerabilities or [ ]) != [ ]) then "insecure"
    else if unfree then "unfree"
    else if holds (isList (m.platforms or null) && !(elem targetSystem m.platforms)) then "unsupported-system"
    else "refused";

  # What a requested name is: found (a derivation nixpkgs lets us build), refused (a derivation
  # whose drvPath throws: broken, unfree, insecure), throws (an alias that was removed: the builder
  # asks `explain` for the message), or unknown.
  classify = name:
    let
      found = walkName name;
      value = found.value;
      evaluates = found != null && (tryEval (builtins.seq value true)).success;
    in
    if found == null then { kind = "unknown"; }
    else if !evaluates then { kind = "throws"; }
    else if !(isDerivation value) then { kind = "unknown"; }
    else if !(tryEval value.drvPath).success then { kind = "refused"; reason = refusal value; }
    else { kind = "found"; inherit found; };

  lookups = map (name: { inherit name; } // classify name) requested;
  named = kind: filter (l: l.kind == kind) lookups;
  known = map (l: { inherit (l) name; inherit (l.found) path value; }) (named "found");
  sortedNames = ls: attrNames (listToAttrs (map (l: { inherit (l) name; value = true; }) ls));
  unknownNames = sortedNames (named "unknown");

  resolve = assert argumentsOk; {
    resolved = listToAttrs (map (l: { inherit (l) name; value = concatStringsSep "." l.path; }) known);
    unknown = unknownNames; # attrNames: sorted and deduplicated
    throws = sortedNames (named "throws");
    refused = listToAttrs (map (l: { inherit (l) name; value = l.reason; }) (named "refused"));
  };

  # The error the first requested name raises when forced without tryEval: nix-instantiate fails
  # with the package set's own message (an alias's "'x' has been renamed to 'y'") on stderr.
  explain =
    assert argumentsOk;
    let found = walkName (head requested);
    in if found == null then fail "no such attribute" else builtins.seq found.value.drvPath "evaluates";

  # ---- the package index (the front page's name checks) ---------------------------------------

  # The same set without its aliases (nixpkgs reads config.allowAliases; a set that ignores it has none), for
  # telling an alias from a package. Imported only by `index` and `renamed`.
  plainPkgs = import srcPath { system = targetSystem; config = { allowAliases = false; }; overlays = [ ]; };
  plainNames = let r = tryEval (attrNames plainPkgs); in if r.success then r.value else attrNames pkgs;
  plainSet = listToAttrs (map (n: { name = n; value = true; }) plainNames);

  # The top-level names of the set (sorted, as attrNames gives them), and those of them that are aliases.
  index = assert argumentsOk; {
    names = plainNames;
    aliases = filter (n: !(plainSet ? ${n})) (attrNames pkgs);
  };

  # For each requested top-level name that is an alias of a package: the package's name, when one of the
  # plain names matching the alias's package name (pname) has the same derivation; else null.
  aliasTarget = name:
    let
      drv = tryEval (pkgs.${name}.drvPath);
      pname = tryEval (pkgs.${name}.pname or (builtins.parseDrvName pkgs.${name}.name).name);
      candidates = if pname.success && isString pname.value then filter (a: lower a == lower pname.value) plainNames else [ ];
      same = filter (a: let d = tryEval plainPkgs.${a}.drvPath; in drv.success && d.success && d.value == drv.value) candidates;
    in
    if pkgs ? ${name} && !(plainSet ? ${name}) && same != [ ] then head same else null;
  renamed = assert argumentsOk; listToAttrs (map (name: { inherit name; value = aliasTarget name; }) requested);

  # ---- image -----------------------------------------------------------------------------------

  alwaysAdded = filter (n: pkgs ? ${n} && isDerivation pkgs.${n}) [ "cacert" "iana-etc" ];
  derivations = listToAttrs (map (n: { name = n; value = pkgs.${n}; }) alwaysAdded)
    // listToAttrs (map (l: { inherit (l) name value; }) known);

  packageOutputs = builtins.mapAttrs (n: d: d.outPath) derivations;

  # What `nix-env -i` installs of a package: the outputs in meta.outputsToInstall (nixpkgs sets it
  # to e.g. [ "bin" "man" ], so `curl` brings the curl program, not only libcurl), else the default one.
  installedOutputs = d:
    let names = (tryEval (d.meta.outputsToInstall or null)).value;
    in if isList names && names != [ ] then map (o: d.${o}.outPath) (filter (o: isString o && d ? ${o}) names)
       else [ d.outPath ];

  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  topLevel = unique (builtins.concatMap (n: installedOutputs derivations.${n})
    (sort builtins.lessThan (map (l: l.name) known) ++ alwaysAdded));

  # An image of one package runs its program by default (meta.mainProgram, as lib.getExe reads it).
  mainProgram =
    if builtins.length known != 1 then null
    else let p = (tryEval ((head known).value.meta.mainProgram or null)).value;
         in if isString p && match "[A-Za-z0-9._+-]+" p != null then p else null;

  # What the builder reads from the image's output besides the closure graph (README.md, `image`).
  metadata = {
    version = 3;
    system = targetSystem;
    packages = packageOutputs;
    resolved = resolve.resolved;
    inherit mainProgram topLevel;
  };

  # The image's derivation runs where Nix runs, whatever the image's system, with the package set's own
  # busybox for that system: a set the builder serves must have one (nixpkgs and the offline sets do).
  busyboxBin =
    if buildPkgs ? busybox && isDerivation buildPkgs.busybox then "${buildPkgs.busybox}/bin/busybox"
    else fail "the package set has no busybox, which builds the image's derivation";

  # The derivation's builder, run as `busybox sh -ec SCRIPT BUSYBOX`: it copies the structured attributes Nix
  # wrote for the build (.attrs.json: `metadata`, and the closure `graph` that exportReferencesGraph adds) to
  # $out/image.json. Nothing else runs, so the output depends only on the closure.
  # With __structuredAttrs, Nix 2.8 sets no $out: the output path is in .attrs.sh (shell syntax that busybox sh
  # cannot source, so sed picks it out). Nix (2.8 too) names both files in NIX_ATTRS_{SH,JSON}_FILE: those when
  # set, the working directory's copies otherwise. In Nix 2.8's sandbox those variables name the build folder as
  # seen from outside the sandbox, where the files are not: then the working directory's copies are the ones.
  copyAttributes = ''
    bb=$0
    attrs_sh=''${NIX_ATTRS_SH_FILE:-.attrs.sh}
    attrs_json=''${NIX_ATTRS_JSON_FILE:-.attrs.json}
    [ -e "$attrs_sh" ] || attrs_sh=.attrs.sh
    [ -e "$attrs_json" ] || attrs_json=.attrs.json
    out=$("$bb" sed -n "s/^declare -A outputs=.*\['out'\]='\([^']*\)'.*/\1/p" "$attrs_sh")
    case $out in
      /*) ;;
      *) echo "image-metadata: no output path in $attrs_sh" >&2; exit 1 ;;
    esac
    "$bb" mkdir "$out"
    "$bb" cp "$attrs_json" "$out/image.json"
  '';

  image =
    assert argumentsOk;
    let unavailable = sortedNames (filter (l: l.kind != "found") lookups);
    in if unavailable != [ ] then fail "unknown packages: ${concatStringsSep ", " unavailable}"
    else derivation {
      name = "image-metadata";
      system = builtins.currentSystem;
      builder = busyboxBin;
      args = [ "sh" "-ec" copyAttributes busyboxBin ];
      __structuredAttrs = true;
      inherit metadata;
      exportReferencesGraph.graph = topLevel;
    };
in
{
  # The store paths the image's closure grows from (its packages' installed outputs, cacert, iana-etc), for the
  # front page's size estimate: evaluated, never built.
  roots = assert argumentsOk; topLevel;
  inherit requirements resolve explain index renamed image;
}
