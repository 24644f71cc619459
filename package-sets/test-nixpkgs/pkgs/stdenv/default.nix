# mkDerivation for the set: `busybox sh -ec script` as the builder (Debian's static busybox,
# apt-get install busybox-static), several outputs, and meta checked the way nixpkgs'
# check-meta.nix does it: a refused package still has `type` and `meta`, but its drvPath and
# outPath throw a message that names the reason and the setting that would allow it.
{ system, lib, config }:
let
  hostBusybox =
    if builtins.pathExists /usr/bin/busybox then
      builtins.path {
        path = /usr/bin;
        # busybox acts as the multi-call binary only under a name that starts with "busybox".
        name = "busybox";
        filter = p: t: baseNameOf p == "busybox";
      }
    else
      throw "package-sets/test-nixpkgs needs Debian's static busybox at /usr/bin/busybox (apt-get install busybox-static)";

  # Applet links, so that scripts can call `mkdir`, `cat`, ... by name.
  tools = derivation {
    name = "busybox-tools";
    inherit system;
    builder = "${hostBusybox}/busybox";
    args = [ "sh" "-ec" ''
      bb=${hostBusybox}/busybox
      $bb mkdir -p $out/bin
      for applet in $($bb --list); do $bb ln -s $bb $out/bin/$applet; done
    '' ];
  };

  # Why nixpkgs would refuse to evaluate the package, or null.
  problem = name: meta:
    let
      licenses = let l = meta.license or [ ]; in if builtins.isList l then l else [ l ];
      allow = variable: setting: ''

        a) To allow it for one build, set the environment variable
             $ export ${variable}=1
        b) Or set `${setting}` in the package set's config.
      '';
    in
    if (meta.broken or false) && !config.allowBroken then
      "Package ‘${name}’ is marked as broken, refusing to evaluate.\n${allow "NIXPKGS_ALLOW_BROKEN" "allowBroken = true"}"
    else if (meta.knownVulnerabilities or [ ]) != [ ] && !config.allowInsecure then
      "Package ‘${name}’ is marked as insecure, refusing to evaluate.\n\nKnown issues:\n"
      + builtins.concatStringsSep "\n" (map (v: " - ${v}") meta.knownVulnerabilities)
      + "\n${allow "NIXPKGS_ALLOW_INSECURE" "permittedInsecurePackages"}"
    else if builtins.any (l: !(l.free or true)) licenses && !config.allowUnfree then
      "Package ‘${name}’ has an unfree license (‘${builtins.concatStringsSep ", " (map (l: l.shortName) licenses)}’), refusing to evaluate.\n${allow "NIXPKGS_ALLOW_UNFREE" "allowUnfree = true"}"
    else if meta ? platforms && !(builtins.elem system meta.platforms) && !config.allowUnsupportedSystem then
      "Package ‘${name}’ is not available on the requested hostPlatform ${system}.\n${allow "NIXPKGS_ALLOW_UNSUPPORTED_SYSTEM" "allowUnsupportedSystem = true"}"
    else null;

  # mkDerivation { pname, version, script, outputs ? [ "out" ], meta ? { }, ... }: `script` runs under
  # busybox sh with an environment variable per output; extra attributes become environment variables.
  mkDerivation = { pname, version, script, outputs ? [ "out" ], meta ? { }, ... }@args:
    let
      name = "${pname}-${version}";
      drv = derivation (builtins.removeAttrs args [ "script" "meta" ] // {
        inherit name system outputs;
        builder = "${hostBusybox}/busybox";
        args = [ "sh" "-ec" script ];
        PATH = "${tools}/bin";
      });
      refused = problem name meta;
      # Every output's paths throw too, as nixpkgs' extendDerivation makes them.
      guard = d: d // { drvPath = throw refused; outPath = throw refused; };
      withMeta = d: d // { inherit meta; };
    in
    if refused == null then withMeta drv
    else withMeta (guard drv // builtins.listToAttrs (map (o: { name = o; value = guard drv.${o}; }) outputs));
in
{
  inherit mkDerivation;
  busyboxBinary = "${hostBusybox}/busybox";
}
