// Work over many items with a bound on how much runs at once: layers (one per core), upload parts.
/** Runs work over items, `limit` at a time; on a failure starts nothing new, waits for what runs, then throws. */
export async function mapWithLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let firstError: { error: unknown } | null = null;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length && !firstError) {
      const index = next++;
      try {
        results[index] = await work(items[index]);
      } catch (error) {
        firstError ??= { error };
      }
    }
  });
  // Waiting for work still in flight: nothing lands after the caller has cleaned up (an aborted upload).
  await Promise.all(workers);
  if (firstError) throw (firstError as { error: unknown }).error;
  return results;
}
