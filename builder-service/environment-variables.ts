// The builder's settings are environment variables, each described once, as a valibot schema: it reads the
// variable's text (unset and empty alike mean the default), names the variable in every message, and carries what
// `builder-service --help` and the README's configuration table say about it, its default included (as
// v.metadata). This file has what those schemas are made of, how a set of them is read, and how
// their help is written; config.ts and nix-settings.ts describe the variables themselves.
import * as v from "valibot";

/** A variable's schema, from the environment's text (or nothing) to the value the builder uses. */
type VariableSchema<T> = v.GenericSchema<string | undefined, T>;

/** How a variable's schema is made: for its name, which every message names. */
export type Variable<T> = (name: string) => VariableSchema<T>;

/**
 * What --help says about a variable: what it does, and its default (a value, or words such as "half the cores")
 * with the values it takes; "required" for a variable without a default. The last of a schema's counts.
 */
/** shownDefault: the default as --help shows it ("required" for a setting without one), or null for none. */
export const help = <T>(meaning: string, shownDefault: string | null) =>
  v.metadata<T, { meaning: string; shownDefault: string | null }>({ meaning, shownDefault });

/** Not listed by --help: an older name of another variable, or a retired one whose use is refused with a message. */
export const unlisted = <T>() => v.metadata<T, { meaning: null }>({ meaning: null });

/** A variable's text, trimmed; "" when it is unset. Every variable's schema starts here. */
export const text = () => v.pipe(v.optional(v.string(), ""), v.trim());

/** A variable that has no default: its absence is a problem, said with `whenMissing`. */
export function requiredText(meaning: string, whenMissing: string): Variable<string> {
  return (name) => v.pipe(text(), v.nonEmpty(`${name} is not set: ${whenMissing}`), help(meaning, "required"));
}

/** Plain text, `fallback` when unset. */
export function optionalText(meaning: string, fallback: string): Variable<string> {
  return () =>
    v.pipe(
      text(),
      v.transform((value) => value || fallback),
      help(meaning, fallback),
    );
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A whole number as help shows it, with its size in MiB or GiB when it is a byte count. */
function shownNumber(value: number, bytes: boolean): string {
  if (!bytes || value === 0) return String(value);
  if (value % GiB === 0) return `${value} = ${value / GiB} GiB`;
  if (value % MiB === 0) return `${value} = ${value / MiB} MiB`;
  return String(value);
}

interface WholeNumber {
  meaning: string;
  /** The value when unset, and, if it is not that value itself, how help says it ("half the cores, at least 1"). */
  fallback: number | { value: number; shown: string };
  min: number;
  /** Number.MAX_SAFE_INTEGER: no upper bound. */
  max: number;
  /** A number of bytes: help shows it in MiB or GiB too. */
  bytes?: boolean;
}

/** Unset, one of `words`, or a whole number from min to max; the message names the variable and the range. */
export function wholeNumberCheck(name: string, min: number, max: number, words: readonly string[] = []) {
  return v.check(
    (raw: string) =>
      raw === "" || words.includes(raw) || (Number.isInteger(Number(raw)) && Number(raw) >= min && Number(raw) <= max),
    (issue) => `${name}=${String(issue.input)} is not a whole number from ${min} to ${max}`,
  );
}

/** A whole number from min to max. */
export function wholeNumber({ meaning, fallback, min, max, bytes = false }: WholeNumber): Variable<number> {
  const value = typeof fallback === "number" ? fallback : fallback.value;
  const shownFallback = typeof fallback === "number" ? shownNumber(fallback, bytes) : fallback.shown;
  const range =
    max === Number.MAX_SAFE_INTEGER ? `${min} or more` : `${shownNumber(min, bytes)} to ${shownNumber(max, bytes)}`;
  return (name) =>
    v.pipe(
      text(),
      wholeNumberCheck(name, min, max),
      v.transform((raw) => (raw === "" ? value : Number(raw))),
      help(meaning, `${shownFallback}; ${range}`),
    );
}

/** Words separated by white space (and commas, with `commas`); empty when unset. */
export const words = (commas = false) =>
  v.pipe(
    text(),
    v.transform((raw) => raw.split(commas ? /[\s,]+/ : /\s+/).filter(Boolean)),
  );

/** The schema of a set of variables, each made for its name; the order is the one --help lists them in. */
export function environment<const TVariables extends Record<string, Variable<unknown>>>(variables: TVariables) {
  const entries = Object.fromEntries(Object.entries(variables).map(([name, variable]) => [name, variable(name)]));
  return v.object(entries as { [K in keyof TVariables]: ReturnType<TVariables[K]> });
}

/**
 * Reads every variable of the set, reporting every problem at once: each variable's schema stops at its first
 * failing check, but every variable is read. The values only come with no problem at all.
 */
export function readEnvironment<const TEntries extends v.ObjectEntries>(
  schema: v.ObjectSchema<TEntries, undefined>,
  env: NodeJS.ProcessEnv,
):
  | { values: v.InferOutput<v.ObjectSchema<TEntries, undefined>>; problems: string[] }
  | { values: null; problems: string[] } {
  const result = v.safeParse(schema, env, { abortEarly: false, abortPipeEarly: true });
  return result.success
    ? { values: result.output, problems: [] }
    : { values: null, problems: result.issues.map((issue) => issue.message) };
}

/** [name, what it does and its default] for each listed variable, in the schema's order. */
export function helpRows(schema: v.ObjectSchema<v.ObjectEntries, undefined>): [name: string, meaning: string][] {
  const rows: [string, string][] = [];
  for (const [name, variable] of Object.entries(schema.entries)) {
    const { meaning, shownDefault } = v.getMetadata(variable);
    if (typeof meaning !== "string") continue;
    if (shownDefault === "required") rows.push([name, `required: ${meaning}`]);
    else if (typeof shownDefault === "string") rows.push([name, `${meaning} (default: ${shownDefault})`]);
    else rows.push([name, meaning]);
  }
  return rows;
}
