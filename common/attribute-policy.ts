// Which attribute paths a registry builds: a deny-list, by default of the package sets that are whole other
// instances of nixpkgs (cross-compiled, static, musl, i686, LLVM, ...: one name there can mean building a toolchain
// from source) and of NixOS tests, and an optional allow-list.
//
// The rule is about attributes, not spellings, so it compares names the way nix/build-image.nix (pickName) finds
// them: case-insensitively, and a name that starts with a digit also as its `_`-prefixed attribute (`2048` is
// `_2048`). And a set is reached from anywhere in a path, not only from the root (`buildPackages.pkgsCross.x.hello`,
// `pkgsBuildHost.pkgsStatic.curl`), so a deny entry matches at any depth; an allow entry is a prefix from the root.

/**
 * Denied unless the operator says otherwise. The other package sets of nixpkgs' pkgs/top-level/stage.nix (and later
 * ones of the same kind), `nixosTests` (virtual machines that boot NixOS), and `tests`: nixpkgs' own test suite, and
 * every package's passthru.tests, through which a package reaches its NixOS tests under another name.
 */
export const DEFAULT_DENIED_ATTRIBUTES: readonly string[] = [
  "pkgsCross",
  "pkgsStatic",
  "pkgsMusl",
  "pkgsi686Linux",
  "pkgsx86_64Darwin",
  "pkgsLLVM",
  "pkgsLLVMLibc",
  "pkgsArocc",
  "pkgsZig",
  "pkgsExtraHardening",
  "pkgsCuda",
  "pkgsRocm",
  "nixosTests",
  "tests",
];

export interface AttributePolicy {
  /** Attribute paths refused wherever they occur in a requested path. */
  deny: readonly string[];
  /** When not null, only paths under one of these (from the root) are built. */
  allow: readonly string[] | null;
}

export const DEFAULT_ATTRIBUTE_POLICY: AttributePolicy = { deny: DEFAULT_DENIED_ATTRIBUTES, allow: null };

/** Why a path is refused: the deny entry it reaches, or (allow) that no allow entry covers it. */
export type AttributeRefusal = { path: string; list: "deny"; entry: string } | { path: string; list: "allow" };

/** One attribute however it is spelled: lower case, without the `_` nixpkgs puts before a leading digit. */
function canonical(component: string): string {
  return component.toLowerCase().replace(/^_(?=[0-9])/, "");
}

function components(path: string): string[] {
  return path.split(".").map(canonical);
}

/** Whether `part` occurs in `whole` as consecutive components starting at `at`. */
function occursAt(whole: readonly string[], part: readonly string[], at: number): boolean {
  return (
    part.length > 0 && at + part.length <= whole.length && part.every((component, i) => whole[at + i] === component)
  );
}

/** The refusal of one attribute path (as requested, or as Nix resolved it), or null when the policy builds it. */
export function attributeRefusal(policy: AttributePolicy, path: string): AttributeRefusal | null {
  const requested = components(path);
  for (const entry of policy.deny) {
    const denied = components(entry);
    if (requested.some((_, at) => occursAt(requested, denied, at))) return { path, list: "deny", entry };
  }
  if (policy.allow && !policy.allow.some((entry) => occursAt(requested, components(entry), 0)))
    return { path, list: "allow" };
  return null;
}

/** The refusals of the paths the policy does not build, in the order given. */
export function attributeRefusals(policy: AttributePolicy, paths: readonly string[]): AttributeRefusal[] {
  return paths
    .map((path) => attributeRefusal(policy, path))
    .filter((refusal): refusal is AttributeRefusal => refusal !== null);
}
