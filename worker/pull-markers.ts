// The image's pull marker (pulls/<imageKey>, common/bucket-layout.ts): rewritten on a pull by tag, at most once a
// day per isolate, so that the garbage collection knows which old images are still pulled. One small write a day
// per image and isolate, after the response (waitUntil), never in a pull's way.
import { LruMap } from "../common/lru-map.ts";
import { describeError } from "./responses.ts";
import type { RegistryStorage } from "./storage.ts";

const DAY_MS = 86_400_000;

/** The day (since the epoch) each image's marker was last written by this isolate. */
const written = new LruMap<string, number>(4096);

export async function notePull(storage: RegistryStorage, imageKey: string, nowMs = Date.now()): Promise<void> {
  const day = Math.floor(nowMs / DAY_MS);
  if (written.get(imageKey) === day) return;
  written.set(imageKey, day);
  try {
    await storage.putPullMarker(imageKey);
  } catch (error) {
    // The next pull in another isolate, or tomorrow, writes it; an old image may meanwhile look unpulled.
    written.delete(imageKey);
    console.warn(`could not record the pull of image ${imageKey}: ${describeError(error)}`);
  }
}
