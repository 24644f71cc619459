// HTTP Range requests (RFC 9110 section 14) for blobs: one byte range, or the whole blob. Shared by the
// worker (blobs from R2) and the builder (blobs from its store), so both answer a range the same way.

export type RangeSpec =
  /** No Range header, or a unit other than bytes (ignored, as RFC 9110 requires). */
  | { kind: "none" }
  /** Several ranges: the whole blob is served with 200, which the RFC allows. */
  | { kind: "multiple" }
  /** bytes=first-last or bytes=first- */
  | { kind: "from"; first: number; last: number | null }
  /** bytes=-length: the last length bytes */
  | { kind: "suffix"; length: number }
  /** The bytes unit with a range set that doesn't parse, or last < first: answered with 416. */
  | { kind: "invalid" };

export type SatisfiedRange = { start: number; end: number } | null;

const RANGE_HEADER = /^\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(.*)$/;

export function parseRange(header: string | null): RangeSpec {
  if (header === null) return { kind: "none" };
  const match = RANGE_HEADER.exec(header);
  if (!match) return { kind: "invalid" };
  const [, unit, set] = match;
  if (unit.toLowerCase() !== "bytes") return { kind: "none" };
  const specs = set
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (specs.length === 0) return { kind: "invalid" };
  if (specs.length > 1) return { kind: "multiple" };
  const spec = specs[0];
  const from = /^(\d+)\s*-\s*(\d*)$/.exec(spec);
  if (from) {
    const first = Number(from[1]);
    const last = from[2] === "" ? null : Number(from[2]);
    if (!Number.isSafeInteger(first) || (last !== null && !Number.isSafeInteger(last))) return { kind: "invalid" };
    if (last !== null && last < first) return { kind: "invalid" };
    return { kind: "from", first, last };
  }
  const suffix = /^-\s*(\d+)$/.exec(spec);
  if (suffix) {
    const length = Number(suffix[1]);
    return Number.isSafeInteger(length) ? { kind: "suffix", length } : { kind: "invalid" };
  }
  return { kind: "invalid" };
}

/** The inclusive byte range to serve for a single-range spec, or null when it can't be satisfied. */
export function satisfyRange(
  spec: { kind: "from"; first: number; last: number | null } | { kind: "suffix"; length: number },
  size: number,
): SatisfiedRange {
  if (spec.kind === "from") {
    if (spec.first >= size) return null;
    const end = spec.last === null ? size - 1 : Math.min(spec.last, size - 1);
    return { start: spec.first, end };
  }
  if (spec.length === 0 || size === 0) return null;
  return { start: Math.max(0, size - spec.length), end: size - 1 };
}
