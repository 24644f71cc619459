// One coordinator per image key (a Durable Object named by the key): however many isolates and edge locations pull
// an image that is not built yet, its build job is started once, on one builder, and every pull waits here.
//
// - The job goes to the first builder of the key's rendezvous ranking (common/builder-ranking.ts) that takes it. A
//   builder running and queueing as many builds as it may answers 503 BUILDER_BUSY: the next one is asked, and when
//   none takes the job, the pulls get that answer with its Retry-After (the next pull tries again).
// - While pulls wait, the coordinator asks that builder after the job: POST /jobs with the job's id and waitSeconds,
//   which the builder answers when the job ends or after that wait (10 s, far from the 100 s after which Cloudflare
//   cuts an origin; a third of BUILDER_STALE_SECONDS when that is shorter), so the end of a build is heard of at
//   once, with one short request every few seconds meanwhile.
// - A builder that gives no answer for BUILDER_STALE_SECONDS is taken for gone: the job is submitted to the next
//   builder in the ranking. A builder that restarted has the job again anyway (it resumes unfinished jobs, and a
//   submission of a job it doesn't know starts it).
// - The image record in the bucket, written by the builder last, is what "done" means.
//
// Nothing here is the source of truth: the job's id and builder are kept in storage so that a coordinator that was
// evicted in the middle goes on with the same builder, and the builders and the bucket hold the rest.
//
// Longer than most files here: one Durable Object's state machine (submit, poll, fail over, answer), read as a whole.
import { DurableObject } from "cloudflare:workers";
import { MAX_JOB_WAIT_SECONDS, type BuildRequest, type JobRequest } from "../common/builder-api.ts";
import {
  isFinished,
  type ImageRecord,
  type JobPhase,
  type JobProgress,
  type JobRecord,
} from "../common/bucket-layout.ts";
import { isBuilderBusy, submitJob, type BuilderOutcome } from "./builder-client.ts";
import { rankBuilders } from "../common/builder-ranking.ts";
import { builderUrls } from "./builder-pool.ts";
import type { Env } from "./env.ts";
import { describeError, type Failure } from "./responses.ts";
import { r2Storage } from "./storage.ts";

/** A builder that answers at once although the job runs (it does not hold answers) is asked again after this. */
const POLL_MS = 500;
const DEFAULT_STALE_SECONDS = 30;
/** The COLD_BUILDS binding's period (wrangler.toml): a refused client may try again after it. */
const COLD_BUILDS_PERIOD_SECONDS = 60;

export type CoordinatorAnswer =
  | { state: "done"; image: ImageRecord }
  | { state: "failed"; failure: Failure }
  | { state: "running"; phase: JobPhase; progress: JobProgress };

/** What survives an eviction: which job, on which builder. */
interface KeptJob {
  jobId: string;
  builders: string[];
  index: number;
  switches: number;
}

interface ActiveJob extends KeptJob {
  key: string;
  request: BuildRequest;
  /** When the current builder last answered (or was given the job). */
  lastAnswerMs: number;
  record: JobRecord | null;
}

function staleSeconds(env: Env): number {
  const raw = env.BUILDER_STALE_SECONDS?.trim();
  return raw && /^\d+$/.test(raw) && Number(raw) > 0 ? Number(raw) : DEFAULT_STALE_SECONDS;
}

/** How long the builder may hold an answer: a builder is asked at least three times before it counts as gone. */
export function waitSeconds(env: Env): number {
  return Math.min(MAX_JOB_WAIT_SECONDS, Math.floor(staleSeconds(env) / 3));
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class BuildCoordinator extends DurableObject<Env> {
  private job: ActiveJob | null = null;
  private starting: Promise<CoordinatorAnswer | null> | null = null;
  private readonly listeners = new Set<(answer: CoordinatorAnswer) => void>();
  private polling = false;

  /**
   * Waits up to waitMs for the image: "done" once its record is in the bucket, "failed" with what a pull of it
   * gets, or "running" when the time is up (the caller asks again, keeping its client's connection).
   */
  async awaitImage(
    key: string,
    request: BuildRequest,
    waitMs: number,
    client: string | null = null,
  ): Promise<CoordinatorAnswer> {
    if (!this.job) {
      this.starting ??= this.start(key, request, client).finally(() => (this.starting = null));
      const settled = await this.starting;
      if (settled) return settled;
    }
    const job = this.job;
    if (!job) return this.awaitImage(key, request, waitMs, client); // settled between the start and now
    const answer = new Promise<CoordinatorAnswer>((resolve) => {
      const listener = (outcome: CoordinatorAnswer) => {
        clearTimeout(timer);
        resolve(outcome);
      };
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        resolve({
          state: "running",
          phase: this.job?.record?.phase ?? "queued",
          progress: this.job?.record?.progress ?? {},
        });
      }, waitMs);
      this.listeners.add(listener);
    });
    void this.poll();
    return answer;
  }

  /** Starts (or, after an eviction, picks up) the job; an answer when it is settled at once. */
  private async start(key: string, request: BuildRequest, client: string | null): Promise<CoordinatorAnswer | null> {
    const image = await r2Storage(this.env.REGISTRY_BUCKET).getImage(key);
    if (image) return { state: "done", image };
    const kept = await this.ctx.storage.get<KeptJob>("job");
    // Only a pull that starts a build counts against its client's quota; joining one that runs is free.
    if (!kept) {
      const refused = await this.overQuota(client);
      if (refused) return refused;
    }
    const builders = await rankBuilders(builderUrls(this.env.BUILDER_URL), key);
    const sameBuilders = kept && kept.builders.join("\n") === builders.join("\n");
    this.job = {
      ...(sameBuilders ? kept : { jobId: crypto.randomUUID(), builders, index: 0, switches: 0 }),
      key,
      request,
      lastAnswerMs: Date.now(),
      record: null,
    };
    // One line per build the edge asks for (Workers Logs index JSON lines).
    console.log(
      JSON.stringify({
        event: "build-requested",
        imageKey: key,
        jobId: this.job.jobId,
        packages: request.packages,
        system: request.system,
        revision: request.revision,
      }),
    );
    return this.submit(this.job, { tryEvery: true });
  }

  /** A client that has started its quota of cold builds for now (the COLD_BUILDS rate limit) gets a 429. */
  private async overQuota(client: string | null): Promise<CoordinatorAnswer | null> {
    const limiter = this.env.COLD_BUILDS;
    if (!client || !limiter) return null;
    const { success } = await limiter.limit({ key: client });
    if (success) return null;
    return {
      state: "failed",
      failure: {
        kind: "error",
        status: 429,
        code: "TOOMANYREQUESTS",
        message:
          `too many new images were built for this client in the last minute (the registry's COLD_BUILDS rate limit); ` +
          `images already built are served without limit; retry in ${COLD_BUILDS_PERIOD_SECONDS} seconds`,
        detail: { retryAfterSeconds: COLD_BUILDS_PERIOD_SECONDS },
        retryAfterSeconds: COLD_BUILDS_PERIOD_SECONDS,
      },
    };
  }

  /**
   * Gives the job to its current builder, or with tryEvery to the first builder from there on that takes it (one
   * that can't be reached or is busy is passed over). Returns an answer when the job is settled by it; when the
   * builders asked were busy (or unreachable), that is the busy answer.
   */
  private async submit(job: ActiveJob, options: { tryEvery: boolean }): Promise<CoordinatorAnswer | null> {
    const tries = options.tryEvery ? job.builders.length : 1;
    let unavailable = "";
    let busy: Exclude<BuilderOutcome<JobRecord>, { kind: "unavailable" }> | null = null;
    for (let i = 0; i < tries; i++) {
      const outcome = await submitJob(this.env, job.builders[job.index], this.jobRequest(job));
      let why: string;
      if (outcome.kind === "unavailable") {
        unavailable = outcome.reason;
        why = `is not answering (${outcome.reason})`;
      } else if (isBuilderBusy(outcome)) {
        busy = outcome;
        why = `is busy (${outcome.body.errors[0].message})`;
      } else {
        await this.keep(job);
        return this.take(job, outcome);
      }
      if (options.tryEvery && i < tries - 1) this.switchBuilder(job, why);
    }
    if (busy) return this.take(job, busy);
    if (options.tryEvery)
      return this.settle({ state: "failed", failure: { kind: "unavailable", reason: unavailable } });
    return null;
  }

  private jobRequest(job: ActiveJob, waitSeconds = 0): JobRequest {
    return { ...job.request, jobId: job.jobId, ...(waitSeconds > 0 ? { waitSeconds } : {}) };
  }

  /** `why` completes "builder 1 of 2 ...": "is not answering (...)", "is busy (...)". */
  private switchBuilder(job: ActiveJob, why: string): void {
    const from = job.index;
    job.index = (job.index + 1) % job.builders.length;
    job.switches++;
    job.lastAnswerMs = Date.now();
    console.warn(
      `build job ${job.jobId} of image ${job.key}: builder ${from + 1} of ${job.builders.length} ${why}; trying builder ${job.index + 1}`,
    );
  }

  private async keep(job: ActiveJob): Promise<void> {
    const kept: KeptJob = { jobId: job.jobId, builders: job.builders, index: job.index, switches: job.switches };
    await this.ctx.storage.put("job", kept);
  }

  /** What a builder's answer means for the job; an answer for the waiting pulls when it is settled. */
  private async take(
    job: ActiveJob,
    outcome: Exclude<BuilderOutcome<JobRecord>, { kind: "unavailable" }>,
  ): Promise<CoordinatorAnswer | null> {
    switch (outcome.kind) {
      case "error": {
        const { status, bodyText, retryAfterSeconds } = outcome;
        return this.settle({
          state: "failed",
          failure: {
            kind: "relay",
            status,
            bodyText,
            ...(retryAfterSeconds === undefined ? {} : { retryAfterSeconds }),
          },
        });
      }
      case "broken":
        return this.settle({
          state: "failed",
          failure: { kind: "internal", message: `building image ${job.key} failed`, reason: outcome.reason },
        });
      case "ok":
        break;
    }
    const record = outcome.value;
    job.lastAnswerMs = Date.now();
    if (record.jobId !== job.jobId && !isFinished(record.phase)) {
      // The builder was already building this image for someone else (another coordinator's earlier job, resumed
      // after a restart): that is the job to wait for.
      job.jobId = record.jobId;
      await this.keep(job);
    }
    job.record = record;
    if (record.phase === "failed") {
      const error = record.error ?? { status: 500, code: "BUILD_FAILED", message: "the build failed" };
      return this.settle({ state: "failed", failure: { kind: "error", ...error } });
    }
    if (record.phase === "done") {
      // The builder's job is done once it has written the image record, its last write; read it where pulls do.
      const image = await r2Storage(this.env.REGISTRY_BUCKET).getImage(job.key);
      if (image) return this.settle({ state: "done", image });
    }
    return null;
  }

  /** Asks after the job while anyone waits for it. */
  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      while (this.job && this.listeners.size > 0) {
        const job = this.job;
        const asked = Date.now();
        try {
          const outcome = await submitJob(
            this.env,
            job.builders[job.index],
            this.jobRequest(job, waitSeconds(this.env)),
          );
          if (isBuilderBusy(outcome)) {
            // The builder lost the job (it restarted) and has no room for it now: another builder may have.
            this.switchBuilder(job, `is busy (${outcome.body.errors[0].message})`);
            await this.keep(job);
            await this.submit(job, { tryEvery: true });
            continue;
          }
          if (outcome.kind !== "unavailable") {
            await this.take(job, outcome);
            if (this.job === job && Date.now() - asked < POLL_MS) await sleep(POLL_MS);
            continue;
          }
          if (Date.now() - job.lastAnswerMs < staleSeconds(this.env) * 1000) {
            await sleep(POLL_MS);
            continue;
          }
          if (job.switches >= job.builders.length * 2) {
            this.settle({
              state: "failed",
              failure: {
                kind: "unavailable",
                reason: `no builder answered about image ${job.key} for ${staleSeconds(this.env)} s (${outcome.reason})`,
              },
            });
            break;
          }
          this.switchBuilder(job, `is not answering (${outcome.reason})`);
          await this.keep(job);
          await this.submit(job, { tryEvery: false });
        } catch (error) {
          this.settle({
            state: "failed",
            failure: { kind: "internal", message: `building image ${job.key} failed`, reason: describeError(error) },
          });
        }
      }
    } finally {
      this.polling = false;
    }
  }

  private settle(answer: CoordinatorAnswer): CoordinatorAnswer {
    this.job = null;
    this.ctx.storage.delete("job").catch(() => undefined);
    const listeners = [...this.listeners];
    this.listeners.clear();
    for (const listener of listeners) listener(answer);
    return answer;
  }
}
