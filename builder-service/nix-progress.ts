// Progress of a nix-build, read from the lines it prints (Nix 2.8 to 2.2x print them alike):
//   these 3 derivations will be built:            /  this derivation will be built:
//   these 12 paths will be fetched (41.20 MiB download, 180.33 MiB unpacked):
//   building '/nix/store/...-hello-2.12.drv'...
//   copying path '/nix/store/...-glibc-2.40' from 'https://cache.nixos.org'...
// A derivation counts as done once the next one starts (Nix builds one at a time unless max-jobs says otherwise,
// so this undercounts by the ones still running); everything is done when nix-build exits.
import type { Count, JobProgress } from "../common/bucket-layout.ts";

const UNITS: Record<string, number> = { KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

export class NixBuildProgress {
  private readonly derivations: Count = { done: 0, total: 0 };
  private readonly fetched: Count & { downloadBytes: number } = { done: 0, total: 0, downloadBytes: 0 };
  private started = 0;

  /** Takes one line of Nix's log; true when the progress changed. */
  line(text: string): boolean {
    const line = text.trim();
    let match = /^these (\d+) derivations will be built:$/.exec(line);
    if (match || line === "this derivation will be built:") {
      this.derivations.total += match ? Number(match[1]) : 1;
      return true;
    }
    match = /^(?:these (\d+) paths|this path) will be fetched \(([\d.]+) (KiB|MiB|GiB|TiB) download/.exec(line);
    if (match) {
      this.fetched.total += match[1] ? Number(match[1]) : 1;
      this.fetched.downloadBytes += Math.round(Number(match[2]) * UNITS[match[3]]);
      return true;
    }
    if (/^building '\/nix\/store\/[^']+\.drv'/.test(line)) {
      this.started++;
      this.derivations.done = Math.min(this.derivations.total, Math.max(0, this.started - 1));
      return true;
    }
    if (/^copying path '\/nix\/store\/[^']+' from '/.test(line)) {
      this.fetched.done = Math.min(this.fetched.total || Infinity, this.fetched.done + 1);
      return true;
    }
    return false;
  }

  /** Everything Nix announced is done (nix-build succeeded). */
  finish(): void {
    this.derivations.done = this.derivations.total;
    this.fetched.done = this.fetched.total;
  }

  get progress(): Pick<JobProgress, "derivations" | "fetched"> {
    return { derivations: { ...this.derivations }, fetched: { ...this.fetched } };
  }
}
