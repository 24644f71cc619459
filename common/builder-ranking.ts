// Which builder an image's job goes to: rendezvous hashing (highest sha256(url + key) first). Every worker and every
// edge location ranks a key's builders alike, its jobs go to the builder whose Nix store already holds most of its
// closure, and when that builder is down its jobs spread over the others instead of all landing on one. Removing a
// builder moves only the keys it was first for.
import { sha256Hex } from "./digest.ts";

/** The builders in the order a job of this key tries them. */
export async function rankBuilders(urls: readonly string[], key: string): Promise<string[]> {
  const scored = await Promise.all(urls.map(async (url) => ({ url, score: await sha256Hex(`${url}\n${key}`) })));
  return scored.sort((a, b) => (a.score < b.score ? 1 : a.score > b.score ? -1 : 0)).map((entry) => entry.url);
}
