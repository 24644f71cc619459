# The builder of build-image.nix's `image` derivation, run as `busybox sh -e image-metadata.sh ...`.
# Writes $out/image.json and $out/rootfs.json; see nix/README.md for both formats.
#
# Arguments: BUSYBOX ENV_FROM META_JSON TOPLEVEL...
#   BUSYBOX    the busybox binary that runs this script (every tool below is one of its applets)
#   ENV_FROM   the store path whose bin/env becomes /usr/bin/env if it has one ("" for none preferred)
#   META_JSON  image.json's fields but `graph`, as one compact JSON object made by builtins.toJSON
#   TOPLEVEL   the image's top-level store paths, in order (earlier ones win file conflicts)
# The closure graph comes from .attrs.json (__structuredAttrs + exportReferencesGraph.graph).
#
# Everything here depends only on the arguments and the contents of the store paths: no clock, no
# host tools, no directory order (find's order only decides parent-before-child, the output is sorted).

bb=$1
env_from=$2
meta=$3
shift 3

tools="$PWD/.bin"
"$bb" mkdir -p "$tools"
for applet in awk find mkdir sed sort; do
  "$bb" ln -sf "$bb" "$tools/$applet"
done
PATH=$tools
set -o pipefail   # a failing find or awk in a pipeline fails the build
export LC_ALL=C

# With __structuredAttrs, Nix 2.8 sets no $out: the output path is in .attrs.sh (shell syntax that
# busybox sh cannot source, so sed picks it out). Nix (2.8 too) names both files in
# NIX_ATTRS_{SH,JSON}_FILE: use those when set, the working directory's copies otherwise.
# In Nix 2.8's sandbox those variables name the build folder as seen from outside the sandbox, where
# the files are not: then the working directory's copies are the ones to read.
attrs_sh=${NIX_ATTRS_SH_FILE:-.attrs.sh}
attrs_json=${NIX_ATTRS_JSON_FILE:-.attrs.json}
[ -e "$attrs_sh" ] || attrs_sh=.attrs.sh
[ -e "$attrs_json" ] || attrs_json=.attrs.json
out=$(sed -n "s/^declare -A outputs=.*\['out'\]='\([^']*\)'.*/\1/p" "$attrs_sh")
case $out in
  /*) ;;
  *) echo "image-metadata: no output path in $attrs_sh" >&2; exit 1 ;;
esac
mkdir -p "$out"

# image.json: {"graph": <.attrs.json's graph>, <the fields of META_JSON>}.
# .attrs.json is JSON that Nix writes (compact, keys sorted); the awk below is a small JSON scanner
# that finds the top-level key "graph" (outside strings, at depth 1) and copies its value verbatim.
# Strings are cut out first (gsub wraps each in \001 marks: raw control characters cannot occur in
# JSON), so brackets inside strings never count.
graph_json() {
  awk '
    { text = text $0 "\n" }
    END {
      mark = sprintf("%c", 1)
      gsub(/"([^"\\]|\\.)*"/, mark "&" mark, text)
      n = split(text, part, mark)
      depth = 0; want = 0; copying = 0; found = 0
      for (i = 1; i <= n; i++) {
        p = part[i]
        if (i % 2 == 0) {                        # a string token
          if (copying) { printf "%s", p; continue }
          if (depth == 1 && p == "\"graph\"") want = 1
          else want = 0
          continue
        }
        for (j = 1; j <= length(p); j++) {       # punctuation, numbers, literals, whitespace
          c = substr(p, j, 1)
          if (copying) printf "%s", c
          if (c == "{" || c == "[") depth++
          else if (c == "}" || c == "]") {
            depth--
            if (copying && depth == 1) { copying = 0; found = 1 }
          } else if (c == ":" && want && depth == 1) { want = 0; copying = 1 }
          else if (copying && depth == 1 && c == ",") { exit 2 }  # a scalar graph: not ours
        }
      }
      if (!found) exit 1
    }
  ' "$attrs_json"
}

graph=$(graph_json) || { echo "image-metadata: no graph array in .attrs.json" >&2; exit 1; }
{
  printf '{"graph":%s,' "$graph"
  printf '%s\n' "${meta#\{}"
} > "$out/image.json"

# rootfs.json: the root filesystem as symlinks into the top-level store paths, like lndir/buildEnv.
# Input lines for the awk below, in priority order:
#   S<TAB>type<TAB>path<TAB>extra   a fixed entry (/tmp, /usr/bin/env)
#   P<store path>                   the next top-level path starts
#   D<full path> / F<full path>     a directory / anything else (file, symlink...) of that path
# Directories of a path are listed before its other entries, so a parent is always decided before
# its children; which top-level path comes first decides conflicts. Names holding a newline cannot
# be listed one per line: they are left out (with their contents) and reported on stderr.
nl='
'
list_entries() {
  tab=$(printf '\t')
  printf 'S%sdirectory%s/tmp%s1777\n' "$tab" "$tab" "$tab"
  env_target=
  for p in "$env_from" "$@"; do
    [ -n "$p" ] || continue
    if [ -e "$p/bin/env" ] || [ -L "$p/bin/env" ]; then env_target="$p/bin/env"; break; fi
  done
  if [ -n "$env_target" ]; then
    printf 'S%sdirectory%s/usr%s\n' "$tab" "$tab" "$tab"
    printf 'S%sdirectory%s/usr/bin%s\n' "$tab" "$tab" "$tab"
    printf 'S%ssymlink%s/usr/bin/env%s%s\n' "$tab" "$tab" "$tab" "$env_target"
  fi
  for p in "$@"; do
    printf 'P%s\n' "$p"
    [ -d "$p" ] || continue        # a top-level path that is a single file adds nothing
    find "$p" -mindepth 1 \( -path "$p/nix-support" -o -name "*$nl*" \) -prune -o -type d -print | sed 's/^/D/'
    find "$p" -mindepth 1 \( -path "$p/nix-support" -o -name "*$nl*" \) -prune -o ! -type d -print | sed 's/^/F/'
    find "$p" -mindepth 1 -path "$p/nix-support" -prune -o -name "*$nl*" -print | while IFS= read -r bad; do
      case $bad in "$p"/*) echo "image-metadata: left out of rootfs.json (newline in the name): $bad" >&2 ;; esac
    done
  done
}

list_entries "$@" | awk -F '\t' '
  function esc(s,   i, c, r) {
    gsub(/\\/, "\\\\", s)
    gsub(/"/, "\\\"", s)
    if (s ~ /[\001-\037]/) {
      r = ""
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c in ctl) r = r ctl[c]
        else r = r c
      }
      s = r
    }
    return s
  }
  function parent(path,   i) {
    for (i = length(path); i > 1; i--) if (substr(path, i, 1) == "/") return substr(path, 1, i - 1)
    return "/"
  }
  function add(path, type, extra,   j, q) {
    if (path in kind) return
    q = parent(path)
    if (!(q in kind) || kind[q] != "directory") return   # the parent is a symlink (or was left out)
    kind[path] = type
    j = "{\"path\":\"" esc(path) "\",\"type\":\"" type "\""
    if (type == "symlink") j = j ",\"target\":\"" esc(extra) "\""
    else if (extra != "") j = j ",\"mode\":\"" extra "\""
    print path sprintf("%c", 1) j "}"
  }
  BEGIN {
    for (i = 1; i < 32; i++) ctl[sprintf("%c", i)] = sprintf("\\u%04x", i)
    ctl["\t"] = "\\t"; ctl["\r"] = "\\r"; ctl["\b"] = "\\b"; ctl["\f"] = "\\f"
    kind["/"] = "directory"
  }
  {
    tag = substr($0, 1, 1)
    if (tag == "S") {
      add($3, $2, $4)
    } else if (tag == "P") {
      top = substr($0, 2)
    } else {
      full = substr($0, 2)
      rel = substr(full, length(top) + 1)
      if (tag == "D") add(rel, "directory", "")
      else add(rel, "symlink", full)
    }
  }
' | sort | awk '
  BEGIN { printf "[" }
  {
    # The entry is after the last mark: a path may hold \001 itself, the escaped entry cannot.
    entry = $0
    sub(/^.*\001/, "", entry)
    printf "%s\n%s", (NR > 1 ? "," : ""), entry
  }
  END { printf "\n]\n" }
' > "$out/rootfs.json"
