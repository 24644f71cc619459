# Renamed and removed packages, as nixpkgs' aliases.nix has them: a plain alias still evaluates; a
# removed one throws with what to use instead.
{ lib, pkgs }:
{
  hello-world = pkgs.hello; # a plain alias
  hello-old = throw "'hello-old' has been renamed to/replaced by 'hello'"; # Converted to throw 2024-01-01
  curl-minimal-old = throw "'curl-minimal-old' has been removed: use 'curl' instead"; # Converted to throw 2024-06-01
}
