// Words and numbers for the front page and the build API: sizes, durations, a build's progress, an image's name.
import type { JobPhase, JobProgress } from "../../common/bucket-layout.ts";
import { ARM64_META, META_PACKAGES, ZSTD_META } from "../../common/image-name.ts";

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

/** One line saying how far a build got, e.g. "building: 12 of 40 derivations built, 3 of 5 paths fetched (12 MiB)". */
export function progressSummary(phase: JobPhase, progress: JobProgress): string {
  const parts: string[] = [];
  if (progress.derivations && progress.derivations.total > 0) {
    parts.push(`${progress.derivations.done} of ${progress.derivations.total} derivations built`);
  }
  if (progress.fetched && progress.fetched.total > 0) {
    parts.push(
      `${progress.fetched.done} of ${progress.fetched.total} paths fetched (${formatBytes(progress.fetched.downloadBytes)})`,
    );
  }
  if (progress.layers && progress.layers.total > 0)
    parts.push(`${progress.layers.done} of ${progress.layers.total} layers written`);
  if (progress.upload && progress.upload.total > 0) {
    parts.push(`${formatBytes(progress.upload.done)} of ${formatBytes(progress.upload.total)} uploaded`);
  }
  return parts.length > 0 ? `${phase}: ${parts.join(", ")}` : phase;
}

/**
 * The shortest name that pulls the image a build request describes: the shell meta-package when all its packages
 * are there, zstd for zstd layers, arm64 for aarch64, then the other packages (names are case-insensitive;
 * repository names are lower case).
 */
export function imageName(request: { packages: readonly string[]; system: string; compression?: string }): string {
  const lower = new Set(request.packages.map((p) => p.toLowerCase()));
  const components: string[] = [];
  // zstd first: only there is it the compression rather than the zstd program.
  if (request.compression === "zstd") components.push(ZSTD_META);
  if (request.system === "aarch64-linux") components.push(ARM64_META);
  for (const [meta, members] of Object.entries(META_PACKAGES)) {
    if (members.every((m) => lower.has(m.toLowerCase()))) {
      components.push(meta);
      for (const m of members) lower.delete(m.toLowerCase());
    }
  }
  components.push(...[...lower].sort());
  return components.join("/");
}
