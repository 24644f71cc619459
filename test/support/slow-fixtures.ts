// Packages for a test's own package set (package-sets/test-pkgs plus these): each sleeps, then installs a program
// printing its name and the run's nonce. The nonce gives every run new store paths, so Nix really builds them each time.

/** The Nix attribute `name = derivation {...};`, for a set whose `base` is package-sets/test-pkgs, `system` its argument. */
export function slowProgram(name: string, seconds: number, nonce: string): string {
  return `
  ${name} = derivation {
    name = "${name}-1.0";
    inherit system;
    builder = "\${base.busybox}/bin/sh";
    nonce = "${nonce}";
    args = [ "-ec" ''
      \${base.busybox}/bin/sleep ${seconds}
      \${base.busybox}/bin/mkdir -p $out/bin
      echo '#!\${base.busybox}/bin/sh' > $out/bin/${name}
      echo 'echo ${name} ${nonce}' >> $out/bin/${name}
      \${base.busybox}/bin/chmod +x $out/bin/${name}
    '' ];
  };`;
}
