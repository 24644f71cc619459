// Whether the builder can build now (Nix new enough for `latest`, the data folder writable, the bucket answering),
// for the unsigned GET /ready and the signed GET /status. The check costs an S3 request, and /ready is open to anyone,
// so an answer is reused for READINESS_MAX_AGE_MS: however often /ready is asked, the check runs at most once in that
// time, and concurrent askers share one run. The problem itself names hosts and the bucket: it goes to the log, once
// each time it changes, and to /status, never to /ready.
import type { Logger } from "./log.ts";

const READINESS_MAX_AGE_MS = 10_000;

/** null when ready, else what is wrong. */
export type ReadinessCheck = () => Promise<string | null>;

export function cachedReadiness(check: ReadinessCheck, log: Logger, maxAgeMs = READINESS_MAX_AGE_MS): ReadinessCheck {
  let last: { problem: string | null; at: number } | null = null;
  let running: Promise<string | null> | null = null;
  const run = async (): Promise<string | null> => {
    let problem: string | null;
    try {
      problem = await check();
    } catch (error) {
      problem = `the readiness check failed: ${(error as Error).message ?? String(error)}`;
    }
    // The first answer is logged only when it is a problem; later ones whenever they change.
    if (problem !== (last?.problem ?? null)) {
      if (problem) log.warn("not-ready", { problem });
      else log.info("ready", { after: last?.problem });
    }
    last = { problem, at: Date.now() };
    return problem;
  };
  return () => {
    if (last && Date.now() - last.at < maxAgeMs) return Promise.resolve(last.problem);
    running ??= run().finally(() => (running = null));
    return running;
  };
}
