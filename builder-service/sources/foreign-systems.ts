// Images for another system than the builder's (`arm64/...` on an x86_64 builder). Nix builds them only
// with help: a remote builder for that system, or emulation (qemu-user through binfmt) announced with
// `extra-platforms`. Most nixpkgs packages need neither, because cache.nixos.org has them built for
// aarch64-linux; only what no binary cache has must be built here. When a derivation does need building
// and nothing can, Nix says "a 'aarch64-linux' with features {} is required to build ..."; this turns
// that into a message that says what to configure.
import type { NixSystem } from "../../common/image-name.ts";
import type { ImageClosure } from "../closure.ts";
import { NixBuildError, NixRunner, type NixSource } from "../nix-runner.ts";

const REQUIRED_SYSTEM = /a '([A-Za-z0-9_-]+)' with features \{[^}]*\} is required to build '\/nix\/store\/[0-9a-z]{32}-([^']+)\.drv', but I am a '([A-Za-z0-9_-]+)'/;

/** The message for Nix's "a 'SYSTEM' ... is required to build" failure, or null for any other failure. */
export function unsupportedSystemMessage(logTail: string): string | null {
  const match = REQUIRED_SYSTEM.exec(logTail);
  if (!match) return null;
  const [, wanted, derivation, host] = match;
  return (
    `this builder cannot build packages for ${wanted}: Nix here runs on ${host} and has no ${wanted} builder ` +
    `(needed for ${derivation}, which no binary cache had). ` +
    `To serve ${wanted} images, give the builder's Nix one of: a remote builder for ${wanted} ` +
    `(nix.conf: builders = ssh://user@host ${wanted}), or qemu-user emulation (Debian: apt-get install ` +
    `qemu-user-static binfmt-support) with nix.conf extra-platforms = ${wanted}; or run a builder on a ${wanted} machine`
  );
}

/** NixRunner whose build failures for a system Nix cannot build say so, and what to configure. */
export class ForeignSystemAwareNixRunner extends NixRunner {
  override async buildClosure(packages: readonly string[], source: NixSource, system: NixSystem): Promise<ImageClosure> {
    try {
      return await super.buildClosure(packages, source, system);
    } catch (error) {
      if (error instanceof NixBuildError) {
        const message = unsupportedSystemMessage(error.logTail);
        if (message) throw new NixBuildError(message, error.failed, error.logTail);
      }
      throw error;
    }
  }
}
