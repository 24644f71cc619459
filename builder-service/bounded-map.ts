// Work over many items with a bound on how much runs at once: layers (one per core), upload parts, lookups.
/**
 * Runs work over items, `limit` at a time; on a failure starts nothing new, waits for what runs, then throws. The
 * results are in the items' order; `weight`, if given, makes the heaviest start first (ties in the items' order):
 * the longest jobs then run beside the short ones instead of alone at the end.
 */
export async function mapWithLimit<T, R>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<R>,
  weight?: (item: T) => number,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  const order = items.map((_, index) => index);
  if (weight) {
    const weights = items.map(weight);
    order.sort((a, b) => weights[b] - weights[a] || a - b);
  }
  let next = 0;
  let firstError: { error: unknown } | null = null;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length && !firstError) {
      const index = order[next++];
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

/**
 * Runs lookup over the items, `limit` at a time, the heaviest first, for work that goes on with each item as soon as
 * its own answer is in: answer(item) waits for that item's result. A failed lookup fails only whoever asks for its
 * answer; settled() waits for every lookup.
 */
export function lookupsInOrder<T, R>(
  items: readonly T[],
  limit: number,
  lookup: (item: T) => Promise<R>,
  weight: (item: T) => number,
): { answer: (item: T) => Promise<R>; settled: () => Promise<void> } {
  const outcomes = new Map<T, Promise<{ value: R } | { error: unknown }>>();
  const begin = new Map<T, () => void>();
  for (const item of items) {
    const started = new Promise<void>((resolve) => begin.set(item, resolve));
    // Settles once the lookup ran, whichever way; a failure is thrown to whoever asks, and only to them.
    outcomes.set(
      item,
      started
        .then(() => lookup(item))
        .then(
          (value) => ({ value }),
          (error: unknown) => ({ error }),
        ),
    );
  }
  const all = mapWithLimit(
    items,
    limit,
    async (item) => {
      begin.get(item)!();
      await outcomes.get(item);
    },
    weight,
  );
  return {
    answer: async (item) => {
      const outcome = await outcomes.get(item)!;
      if ("error" in outcome) throw outcome.error;
      return outcome.value;
    },
    settled: () => all.then(() => undefined),
  };
}
