{ system, config }:
let
  lib = import ../../lib;
  # nixpkgs' config defaults: each refusal can be lifted by the same environment variable as in nixpkgs.
  fromEnv = name: builtins.getEnv name == "1";
  finalConfig = {
    allowUnfree = fromEnv "NIXPKGS_ALLOW_UNFREE";
    allowBroken = fromEnv "NIXPKGS_ALLOW_BROKEN";
    allowInsecure = fromEnv "NIXPKGS_ALLOW_INSECURE";
    allowUnsupportedSystem = fromEnv "NIXPKGS_ALLOW_UNSUPPORTED_SYSTEM";
    allowAliases = true;
  } // config;
  stdenv = import ../stdenv { inherit system lib; config = finalConfig; };
  packages = import ./all-packages.nix { inherit lib stdenv pkgs; };
  aliases = if finalConfig.allowAliases then import ./aliases.nix { inherit lib pkgs; } else { };
  pkgs = aliases // packages // { inherit lib; };
in
pkgs
