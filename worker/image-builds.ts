// A pull of an image that is not built yet: its coordinator (build-coordinator.ts, one per image key) starts the
// build once, and the pull waits on it in rounds of WAIT_ROUND_MS, keeping the client's connection all along. A client
// that gives up and comes back joins the same build.
import type { BuildRequest } from "../common/builder-api.ts";
import type { ImageRecord } from "../common/bucket-layout.ts";
import type { CoordinatorAnswer } from "./build-coordinator.ts";
import type { Env } from "./env.ts";
import { describeError, type Failure } from "./responses.ts";

/** Each call to the coordinator returns within this, building or not. */
const WAIT_ROUND_MS = 20_000;

export type BuildOutcome = { ok: true; image: ImageRecord } | { ok: false; failure: Failure };

/** client: who asks (CF-Connecting-IP at the edge), for the quota of cold builds; null when unknown. */
export async function awaitImage(
  env: Env,
  key: string,
  request: BuildRequest,
  client: string | null,
): Promise<BuildOutcome> {
  const coordinator = env.BUILD_COORDINATOR.get(env.BUILD_COORDINATOR.idFromName(key));
  for (;;) {
    let answer: CoordinatorAnswer;
    try {
      // The RPC stub's inferred type drops members holding `unknown` (an error's detail), which is JSON here.
      // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-assertion -- tsc needs the cast (see above); the linter cannot resolve the stub's type
      answer = (await coordinator.awaitImage(key, request, WAIT_ROUND_MS, client)) as CoordinatorAnswer;
    } catch (error) {
      return {
        ok: false,
        failure: {
          kind: "internal",
          message: `waiting for the build of image ${key} failed`,
          reason: describeError(error),
        },
      };
    }
    if (answer.state === "done") return { ok: true, image: answer.image };
    if (answer.state === "failed") return { ok: false, failure: answer.failure };
  }
}
