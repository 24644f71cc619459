# nixpkgs' entry point: the arguments `import <nixpkgs> { ... }` takes.
{ system ? builtins.currentSystem, config ? { }, overlays ? [ ], ... }:
import ./. { inherit system config; }
