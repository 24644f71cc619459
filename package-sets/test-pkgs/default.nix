# An offline package set for tests and the offline demo.
#
# There is no nixpkgs here (no network), so every derivation is built by Debian's static busybox
# (apt package busybox-static, /usr/bin/busybox), imported into the store. Nothing else from the host
# is used at build time: builders run `busybox sh -ec SCRIPT` with PATH set to the `busybox` package's
# applet links, and scripts write only fixed content, so builds are deterministic (no timestamps,
# no randomness; Nix sets every mtime to 1 anyway).
#
# The set is called the way nixpkgs is: `import ./. { system = ...; config = {}; overlays = []; }`.
# `system` is the system of the derivations. Builders always run the host's busybox; for another
# system (aarch64-linux on an x86_64 host) the packages hold that system's static busybox instead,
# taken from FOREIGN_BUSYBOX_DIR/<system>/busybox (fetch-foreign-busybox.sh in this folder puts
# Debian's busybox-static:arm64 there). Nix builds such derivations only when told the host may
# (`extra-platforms = aarch64-linux`; the builders are x86 programs, so no emulation is needed);
# otherwise it says "a 'aarch64-linux' ... is required". Without the foreign busybox, the
# foreign `busybox` package fails to build with a message saying how to get it.
#
# To add a package, see package-sets/README.md: write `mk { pname; version; script; }` below, where `script`
# is busybox sh that fills $out, and refer to other packages with ${...} so the store paths reference
# each other like real packages do.
{ system ? builtins.currentSystem, ... }:

let
  hostSystem = builtins.currentSystem;
  native = system == hostSystem;

  # Where fetch-foreign-busybox.sh installs other systems' static busybox binaries.
  foreignBusyboxDir = /usr/local/lib/nix-test-pkgs;

  # The host's static busybox, as a store directory holding just `busybox`. Importing the file on its
  # own would name it "<hash>-busybox", and busybox only acts as the multi-call binary (`busybox sh`)
  # when its program name starts with "busybox"; otherwise it looks for an applet of that name.
  hostBusybox =
    if builtins.pathExists /usr/bin/busybox then
      builtins.path {
        path = /usr/bin;
        name = "busybox";
        filter = p: t: baseNameOf p == "busybox";
      }
    else
      throw "package-sets/test-pkgs needs Debian's static busybox at /usr/bin/busybox (apt-get install busybox-static)";

  # The target system's static busybox (a store folder holding `busybox`), or null when there is none.
  targetBusybox =
    if native then hostBusybox
    else if builtins.pathExists (foreignBusyboxDir + "/${system}/busybox") then
      builtins.path {
        path = foreignBusyboxDir + "/${system}";
        name = "busybox";
        filter = p: t: baseNameOf p == "busybox";
      }
    else null;

  # mk { pname, version, script, ... }: a derivation built by `busybox sh -ec script`.
  # Extra attributes are passed on to the derivation (and so into the builder's environment).
  mk = { pname, version, script, useBootstrapBusybox ? false, ... }@args:
    let
      attrs = builtins.removeAttrs args [ "script" "useBootstrapBusybox" ];
    in
    derivation (attrs // {
      name = "${pname}-${version}";
      inherit system;
      builder = "${hostBusybox}/busybox";
      args = [ "sh" "-ec" script ];
      # The `busybox` package's bin/ has a link for every applet; it is built without it. Scripts run
      # the host's applets (buildTools), while what they write refers to ${self.busybox}, the target's.
      PATH = if useBootstrapBusybox then "/path-not-set" else "${buildTools}/bin";
    });

  # The applets scripts run: the package set's own busybox, or for another system the host's.
  buildTools = if native then self.busybox else (import ./. { system = hostSystem; }).busybox;

  # The busybox package for another system: that system's binary, with applet links named after the
  # host busybox's applets (the same Debian version has the same ones).
  foreignBusyboxScript =
    if targetBusybox == null then ''
      echo "package-sets/test-pkgs: no static busybox for ${system} at ${toString foreignBusyboxDir}/${system}/busybox;" >&2
      echo "run package-sets/test-pkgs/fetch-foreign-busybox.sh ${system} (as root) to build this package set for ${system}" >&2
      exit 1
    '' else ''
      bb=${hostBusybox}/busybox
      $bb mkdir -p $out/bin
      $bb cp ${targetBusybox}/busybox $out/bin/busybox
      for applet in $($bb --list); do
        case $applet in busybox) continue ;; esac
        $bb ln -s busybox $out/bin/$applet
      done
    '';

  self = {
    busybox = mk {
      pname = "busybox";
      # Whatever the host's busybox-static is (1.35.0 on Debian 12); the version is not read at
      # evaluation time, so the name says where it comes from instead.
      version = "static";
      useBootstrapBusybox = true;
      script = if !native then foreignBusyboxScript else ''
        bb=${hostBusybox}/busybox
        $bb mkdir -p $out/bin
        $bb cp $bb $out/bin/busybox
        # One link per applet, like nixpkgs' busybox: busybox picks the applet by argv[0].
        for applet in $($bb --list); do
          case $applet in busybox) continue ;; esac
          $bb ln -s busybox $out/bin/$applet
        done
      '';
    };

    hello = mk {
      pname = "hello";
      version = "1.0";
      script = ''
        mkdir -p $out/bin $out/share/doc/hello
        cat > $out/bin/hello <<'EOF'
        #!${self.busybox}/bin/sh
        echo 'Hello, world!'
        EOF
        chmod +x $out/bin/hello
        echo 'hello: prints a greeting (test fixture)' > $out/share/doc/hello/README
      '';
    };

    coreutils = mk {
      pname = "coreutils";
      version = "1.0";
      # The usual coreutils programs, each a link to busybox (which picks the applet by name).
      applets = [
        "[" "base64" "basename" "cat" "chgrp" "chmod" "chown" "cp" "cut" "date" "dd" "df" "dirname"
        "du" "echo" "env" "expand" "expr" "factor" "false" "fold" "groups" "head" "id" "link" "ln"
        "logname" "ls" "md5sum" "mkdir" "mkfifo" "mknod" "mktemp" "mv" "nl" "nproc" "od" "paste"
        "printf" "pwd" "readlink" "realpath" "rm" "rmdir" "seq" "sha1sum" "sha256sum" "sha512sum"
        "shred" "shuf" "sleep" "sort" "stat" "stty" "sync" "tac" "tail" "tee" "test" "timeout"
        "touch" "tr" "true" "truncate" "tty" "uname" "unexpand" "uniq" "unlink" "wc" "whoami" "yes"
      ];
      script = ''
        mkdir -p $out/bin
        for a in $applets; do
          busybox --list | grep -qxF -- "$a" || { echo "busybox has no applet $a" >&2; exit 1; }
          ln -s ${self.busybox}/bin/busybox "$out/bin/$a"
        done
      '';
    };

    bashInteractive = mk {
      pname = "bash-interactive";
      version = "1.0";
      # Not bash: busybox's ash. bin/bash cannot be a link to busybox (there is no `bash` applet,
      # busybox would refuse the name), so it is a script that execs busybox sh.
      script = ''
        mkdir -p $out/bin
        cat > $out/bin/bash <<'EOF'
        #!${self.busybox}/bin/sh
        # busybox ash standing in for bash (test fixture)
        exec ${self.busybox}/bin/sh "$@"
        EOF
        chmod +x $out/bin/bash
        ln -s ${self.busybox}/bin/busybox $out/bin/sh
      '';
    };

    moreutils = mk {
      pname = "moreutils";
      version = "1.0";
      # Small shell versions of two moreutils programs.
      script = ''
        mkdir -p $out/bin
        cat > $out/bin/sponge <<'EOF'
        #!${self.busybox}/bin/sh
        # sponge [-a] [FILE]: soak up all of stdin, then write it to FILE (or stdout).
        bb=${self.busybox}/bin/busybox
        append=
        if [ "$1" = -a ]; then append=1; shift; fi
        tmp=$($bb mktemp) || exit 1
        $bb cat > "$tmp" || { $bb rm -f "$tmp"; exit 1; }
        if [ $# -eq 0 ]; then $bb cat "$tmp"
        elif [ -n "$append" ]; then $bb cat "$tmp" >> "$1"
        else $bb cat "$tmp" > "$1"; fi
        status=$?
        $bb rm -f "$tmp"
        exit $status
        EOF
        cat > $out/bin/ts <<'EOF'
        #!${self.busybox}/bin/sh
        # ts [FORMAT]: prefix every line of stdin with the current time.
        fmt=''${1:-%b %d %H:%M:%S}
        while IFS= read -r line || [ -n "$line" ]; do
          printf '%s %s\n' "$(${self.busybox}/bin/busybox date +"$fmt")" "$line"
        done
        EOF
        chmod +x $out/bin/sponge $out/bin/ts
      '';
    };

    nano = mk {
      pname = "nano";
      version = "1.0";
      # Not nano: a wrapper around busybox vi, so that `shell` resolves and `nano FILE` opens an editor.
      script = ''
        mkdir -p $out/bin
        cat > $out/bin/nano <<'EOF'
        #!${self.busybox}/bin/sh
        # busybox vi standing in for nano (test fixture)
        exec ${self.busybox}/bin/busybox vi "$@"
        EOF
        chmod +x $out/bin/nano
      '';
    };

    cacert = mk {
      pname = "cacert";
      version = "1.0";
      # The build host's CA bundle when it has one (Debian: /etc/ssl/certs/ca-certificates.crt, from
      # the ca-certificates package), else a placeholder that holds no certificate at all. Either way
      # the file is where nixpkgs' cacert puts it. Note: this makes the package (and so every image of
      # this set, which always gets cacert) depend on the host's bundle, like busybox depends on the
      # host's busybox: hosts with different bundles build different store paths.
      bundle =
        let host = /etc/ssl/certs/ca-certificates.crt;
        in if builtins.pathExists host
          then builtins.toFile "ca-bundle.crt" (builtins.readFile host)
          # The text keeps the set's former folder name: a new text would give this package new store paths.
          else builtins.toFile "ca-bundle.crt" ''
            # Placeholder CA bundle of nix/test-pkgs: the build host had no
            # /etc/ssl/certs/ca-certificates.crt, so this bundle trusts nothing.
          '';
      script = ''
        mkdir -p $out/etc/ssl/certs
        cp $bundle $out/etc/ssl/certs/ca-bundle.crt
        ln -s ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
      '';
    };

    iana-etc = mk {
      pname = "iana-etc";
      version = "1.0";
      # A few lines of each file, enough for getservbyname/getprotobyname of the common ones.
      script = ''
        mkdir -p $out/etc
        cat > $out/etc/protocols <<'EOF'
        ip	0	IP		# internet protocol, pseudo protocol number
        icmp	1	ICMP		# internet control message protocol
        tcp	6	TCP		# transmission control protocol
        udp	17	UDP		# user datagram protocol
        ipv6	41	IPv6		# Internet Protocol, version 6
        ipv6-icmp	58	IPv6-ICMP	# ICMP for IPv6
        EOF
        cat > $out/etc/services <<'EOF'
        ftp		21/tcp
        ssh		22/tcp
        telnet		23/tcp
        smtp		25/tcp		mail
        domain		53/tcp
        domain		53/udp
        http		80/tcp		www
        ntp		123/udp
        https		443/tcp
        https		443/udp
        EOF
      '';
    };

    # Depends on two other packages: its script runs hello and coreutils' programs by store path.
    greeting = mk {
      pname = "greeting";
      version = "1.0";
      script = ''
        mkdir -p $out/bin
        cat > $out/bin/greeting <<'EOF'
        #!${self.busybox}/bin/sh
        # greeting [NAME]: hello's greeting, shouted, then a line for NAME.
        ${self.hello}/bin/hello | ${self.coreutils}/bin/tr a-z A-Z
        ${self.coreutils}/bin/printf 'and greetings to %s\n' "''${1:-you}"
        EOF
        chmod +x $out/bin/greeting
      '';
    };

    # 4 MiB of pseudo-random bytes (a 32-bit LCG with a fixed seed, top 24 bits of each step), so the
    # layer holding it barely compresses. Four awk processes make 1 MiB each, in parallel.
    dataset = mk {
      pname = "dataset";
      version = "1.0";
      script = ''
        mkdir -p $out/share/dataset
        for part in 0 1 2 3; do
          awk -v seed=$((part * 7919 + 42)) 'BEGIN {
            x = seed
            for (j = 0; j < 1366; j++) {
              s = ""
              for (i = 0; i < 256; i++) {
                x = (1664525 * x + 1013904223) % 4294967296
                s = s sprintf("%06x", int(x / 256))
              }
              print s
            }
          }' | xxd -r -p | head -c 1048576 > part$part &
        done
        wait
        cat part0 part1 part2 part3 > $out/share/dataset/data.bin
        size=$(wc -c < $out/share/dataset/data.bin)
        [ "$size" -eq 4194304 ] || { echo "dataset: made $size bytes, expected 4194304" >&2; exit 1; }
        echo 'dataset: 4 MiB of pseudo-random bytes (test fixture)' > $out/share/dataset/README
      '';
    };

    # A nested attribute path: `tools` is a plain attribute set, not a derivation.
    tools = {
      greet = mk {
        pname = "greet";
        version = "1.0";
        script = ''
          mkdir -p $out/bin
          cat > $out/bin/greet <<'EOF'
          #!${self.busybox}/bin/sh
          echo 'greetings from tools.greet'
          EOF
          chmod +x $out/bin/greet
        '';
      };
    };

    # A name that starts with a digit is stored with nixpkgs' `_` prefix: registry name `2048`.
    _2048 = mk {
      pname = "2048";
      version = "1.0";
      script = ''
        mkdir -p $out/bin
        cat > $out/bin/2048 <<'EOF'
        #!${self.busybox}/bin/sh
        echo '2048: join the numbers and get to the 2048 tile!'
        EOF
        chmod +x $out/bin/2048
      '';
    };

    # Always fails to build, after a few recognisable lines on stderr.
    broken = mk {
      pname = "broken";
      version = "1.0";
      script = ''
        echo 'compiling broken-1.0...' >&2
        echo 'broken.c:1: the code is missing' >&2
        echo 'error: this package is broken on purpose (test fixture)' >&2
        exit 1
      '';
    };

    # Like nixpkgs' aliases: an attribute that throws when evaluated (resolves as unknown).
    hello-old = throw "'hello-old' has been renamed to 'hello' (test fixture alias)";

    # Attributes that are not derivations (resolve as unknown).
    lib = { version = "1.0"; };
  };
in
self
