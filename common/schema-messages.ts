// What the project adds to valibot, the schema library of every boundary (common/builder-api.ts, the bucket's
// records in common/bucket-layout.ts, the builder's settings): messages that name the field and say what it must
// be, whatever is wrong with it, a missing field included.
import * as v from "valibot";

/**
 * v.object whose missing keys get their entry's own message (the one it gives for no value) instead of the
 * object's: valibot reports a missing key with the object's message, which can only say "not an object".
 */
export function fieldsObject<const TEntries extends v.ObjectEntries>(entries: TEntries, notAnObject: string) {
  return v.object(entries, (issue) => {
    const key = issue.path?.[0]?.key;
    if (typeof key !== "string" || !Object.hasOwn(entries, key)) return notAnObject;
    return v.safeParse(entries[key], undefined).issues?.[0].message ?? notAnObject;
  });
}
