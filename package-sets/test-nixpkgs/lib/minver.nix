# Expose the minimum required version for evaluating Nixpkgs (as nixpkgs' lib/minver.nix does)
"2.18"
