# The packages. Programs are busybox sh scripts; each refers to the packages it uses by store path,
# so the closures have real references.
{ lib, stdenv, pkgs }:
let
  inherit (stdenv) mkDerivation;
  sh = "${pkgs.busybox}/bin/sh";
  # A package with one program, bin/NAME, that runs BODY.
  program = { pname, version ? "1.0", body, meta ? { } }: mkDerivation {
    inherit pname version meta body;
    script = ''
      mkdir -p $out/bin
      printf '#!${sh}\n%s\n' "$body" > $out/bin/${pname}
      chmod +x $out/bin/${pname}
    '';
  };
in
{
  busybox = mkDerivation {
    pname = "busybox";
    version = "static";
    script = ''
      mkdir -p $out/bin
      cp ${stdenv.busyboxBinary} $out/bin/busybox
      for applet in $(busybox --list); do
        case $applet in busybox) ;; *) ln -s busybox $out/bin/$applet ;; esac
      done
    '';
    meta.mainProgram = "busybox";
  };

  hello = program {
    pname = "hello";
    version = "2.12";
    body = "echo 'Hello, world!'";
    meta = { mainProgram = "hello"; license = lib.licenses.mit; };
  };

  coreutils = mkDerivation {
    pname = "coreutils";
    version = "9.5";
    script = ''
      mkdir -p $out/bin
      for a in cat cut echo env head ls mkdir printf sort tail tr uname wc; do
        ln -s ${pkgs.busybox}/bin/busybox $out/bin/$a
      done
    '';
  };

  # busybox ash standing in for bash.
  bashInteractive = mkDerivation {
    pname = "bash-interactive";
    version = "5.2";
    script = ''
      mkdir -p $out/bin
      printf '#!${sh}\nexec ${sh} "$@"\n' > $out/bin/bash
      chmod +x $out/bin/bash
      ln -s ${pkgs.busybox}/bin/busybox $out/bin/sh
    '';
    meta.mainProgram = "bash";
  };

  moreutils = mkDerivation {
    pname = "moreutils";
    version = "0.69";
    script = ''
      mkdir -p $out/bin
      printf '#!${sh}\nexec ${pkgs.busybox}/bin/cat\n' > $out/bin/sponge
      chmod +x $out/bin/sponge
    '';
  };
  nano = program { pname = "nano"; body = "exec ${pkgs.busybox}/bin/busybox vi \"$@\""; meta.mainProgram = "nano"; };

  cacert = mkDerivation {
    pname = "nss-cacert";
    version = "3.101";
    script = ''
      mkdir -p $out/etc/ssl/certs
      echo '# no certificates (test fixture)' > $out/etc/ssl/certs/ca-bundle.crt
    '';
  };

  iana-etc = mkDerivation {
    pname = "iana-etc";
    version = "20240318";
    script = ''
      mkdir -p $out/etc
      printf 'tcp\t6\tTCP\nudp\t17\tUDP\n' > $out/etc/protocols
      printf 'http\t\t80/tcp\nhttps\t\t443/tcp\n' > $out/etc/services
    '';
  };

  # Several outputs as nixpkgs' curl has them: the program in `bin` (the default output), the library in
  # `out`, headers in `dev`, the manual page in `man`. nix-env installs meta.outputsToInstall: bin and man.
  curl = mkDerivation {
    pname = "curl";
    version = "8.9.1";
    outputs = [ "bin" "dev" "out" "man" ];
    script = ''
      mkdir -p $out/lib $bin/bin $dev/include/curl $man/share/man/man1
      echo 'libcurl 8.9.1 (test fixture)' > $out/lib/libcurl.so.4
      printf '#!${sh}\n${pkgs.busybox}/bin/cat %s/lib/libcurl.so.4\n' $out > $bin/bin/curl
      chmod +x $bin/bin/curl
      echo '#define LIBCURL_VERSION "8.9.1"' > $dev/include/curl/curlver.h
      echo '.TH CURL 1 (test fixture)' > $man/share/man/man1/curl.1
    '';
    meta = { mainProgram = "curl"; outputsToInstall = [ "bin" "man" ]; license = lib.licenses.mit; };
  };

  python3 = program {
    pname = "python3";
    version = "3.12.5";
    body = "echo 'Python 3.12.5 (test fixture)'";
    meta.mainProgram = "python3";
  };

  # A nested package set, reached as python3Packages.requests (python3packages.requests in a registry name).
  python3Packages = {
    requests = mkDerivation {
      pname = "python3.12-requests";
      version = "2.32.3";
      script = ''
        site=$out/lib/python3.12/site-packages/requests
        mkdir -p $site
        echo '__version__ = "2.32.3"' > $site/__version__.py
        echo '# interpreter: ${pkgs.python3}/bin/python3' > $site/__init__.py
      '';
    };
  };

  # Packages nixpkgs' check-meta refuses unless its operator allows them.
  legacy-tool = program { pname = "legacy-tool"; version = "0.9"; body = "echo legacy"; meta.broken = true; };
  vendor-tool = program { pname = "vendor-tool"; body = "echo vendor"; meta.license = lib.licenses.unfree; };
  leaky-tool = program {
    pname = "leaky-tool";
    body = "echo leaky";
    meta.knownVulnerabilities = [ "CVE-2099-0001: leaks everything (test fixture)" ];
  };
}
