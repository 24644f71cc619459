# Builds one Debian package's store path (the builder of every `debian.*` derivation of default.nix).
#
# Run as `busybox sh -e build-package.sh` with PATH holding busybox's applets. Environment:
#   src        the package's files as on the host, imported by builtins.path (/usr/bin/curl, /etc/...)
#   planPath   the build plan (passAsFile), one operation a line, fields separated by tabs
#   patchelf   the command that runs patchelf (libc6's loader, --library-path, patchelf)
#   out        where to write
#
# 1. Copy $src into $out in Nix's layout: /usr/X -> $out/X, /X -> $out/X (bin, sbin, lib, share,
#    include, libexec, etc, var...).
# 2. Run the plan, in order:
#      dep      STOREPATH                  a dependency: listed in nix-support/debian-depends (so
#                                          every Debian dependency is a store reference)
#      mkdir    PATH                       mkdir -p $out/PATH
#      copy     FROM TO                    copy the file FROM (another store path) to $out/TO
#      link     PATH TARGET                (re)make $out/PATH a symlink to TARGET
#      elf      PATH INTERP RUNPATH        patchelf: INTERP `-` leaves the interpreter alone;
#                                          RUNPATH `=` leaves it alone, `-` removes it, anything
#                                          else sets it
#      shebang  PATH OLDLEN LINE           replace the first OLDLEN bytes and the newline by LINE
#      write    PATH MODE                  (re)create $out/PATH (a wrapper script) with MODE; the
#      line     TEXT                       `line`s that follow are its lines
# Nothing else is read: the output depends only on $src, the plan and the tools.

tab=$(printf '\t')
mkdir -p "$out/nix-support"

# 1. The files, in Nix's layout. (cp -RP: builds may run as a build user, who cannot keep root's
# ownership; modes come from the source, and the store's read-only directories are made writable.)
if [ -d "$src/usr" ]; then
  cp -RP "$src/usr/." "$out/"
  chmod -R u+w "$out"
fi
for d in "$src"/*; do
  [ -e "$d" ] || [ -L "$d" ] || continue
  b=${d##*/}
  [ "$b" = usr ] && continue
  if [ -d "$out/$b" ] && [ -d "$d" ] && [ ! -L "$d" ]; then
    cp -RP "$d/." "$out/$b/"
  else
    cp -RP "$d" "$out/$b"
  fi
  chmod -R u+w "$out/$b"
done

# 2. The plan.
n_elf=0
n_sh=0
while IFS="$tab" read -r op a b c; do
  case $op in
    dep)
      echo "$a" >> "$out/nix-support/debian-depends"
      ;;
    mkdir)
      mkdir -p "$out/$a"
      ;;
    copy)
      cp "$a" "$out/$b"
      chmod u+w "$out/$b"
      ;;
    link)
      rm -f "$out/$a"
      ln -s "$b" "$out/$a"
      ;;
    elf)
      set --
      [ "$b" = - ] || set -- "$@" --set-interpreter "$b"
      case $c in
        =) ;;
        -) set -- "$@" --remove-rpath ;;
        *) set -- "$@" --set-rpath "$c" ;;
      esac
      # shellcheck disable=SC2086 # $patchelf is a command line (store paths: no spaces)
      $patchelf "$@" "$out/$a" || { echo "build-package.sh: patchelf $* $a failed" >&2; exit 1; }
      n_elf=$((n_elf + 1))
      ;;
    write)
      rm -f "$out/$a"
      : > "$out/$a"
      chmod "$b" "$out/$a"
      chmod u+w "$out/$a"
      file=$out/$a
      ;;
    line)
      printf '%s\n' "$a" >> "$file"
      ;;
    shebang)
      f=$out/$a
      { printf '%s\n' "$c"; tail -c +$((b + 2)) "$f"; } > "$f.debian-pkgs-tmp"
      cat "$f.debian-pkgs-tmp" > "$f"
      rm "$f.debian-pkgs-tmp"
      n_sh=$((n_sh + 1))
      ;;
    '')
      ;;
    *)
      echo "build-package.sh: unknown operation '$op' in the plan" >&2
      exit 1
      ;;
  esac
done < "$planPath"
echo "$debianPackage $debianVersion" > "$out/nix-support/debian-package"
echo "build-package.sh: $debianPackage $debianVersion: $n_elf ELF files patched, $n_sh scripts rewritten"
