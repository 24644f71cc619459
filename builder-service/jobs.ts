// Build jobs: POST /jobs starts an image's build and answers at once; the job runs on, writing its progress to the
// bucket (jobs/<imageKey>.json) as it goes, and, last of all, the image record that makes the image exist.
//
// - One job per image key at a time in this process; asking again reports on it.
// - Admission (admission.ts) first: names the attribute policy refuses and jobs past the queue's end are refused
//   before a job exists. BUILDER_MAX_BUILDS jobs run at once; the others wait in phase "queued", in arrival order.
// - The record is rewritten on every phase, at most every PROGRESS_INTERVAL_MS for progress within a phase, and
//   at least every heartbeatSeconds while the job runs: a record that stops changing means a builder that stopped.
// - Every unfinished job is journalled on local disk (<data>/jobs/<imageKey>.json). A builder that restarts finds
//   them there and runs them again (the layers already uploaded are reused), so none stays "running" forever.
// - A built image is published (its records written) only while no garbage collection is deleting, after checking
//   that all it names is in the bucket (gc/sweep-protocol.ts).
//
// Longer than most files here: a job's states, its record's writes and its journal change together.
import { randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { JobRequest } from "../common/builder-api.ts";
import {
  imageRecordKey,
  isFinished,
  isImageRecord,
  jobRecordKey,
  recentJobKey,
  type ImageRecord,
  type JobError,
  type JobPhase,
  type JobRecord,
} from "../common/bucket-layout.ts";
import { imageKey } from "../common/image-key.ts";
import type { LayerCompression } from "../common/image-name.ts";
import { AdmissionError, type BuildAdmission } from "./admission.ts";
import { publishImage, type SweepBucket } from "./gc/sweep-protocol.ts";
import { getJson, putJson, type BlobStore } from "./blob-store.ts";
import type { ImageBuilder } from "./image-builder.ts";
import type { Logger } from "./log.ts";
import { NixBuildError, NixTooOldError, UnknownPackagesError } from "./nix-runner.ts";
import { S3Error } from "./s3/errors.ts";
import { RevisionUnavailableError } from "./sources/package-source.ts";
import { CommandTimeoutError } from "./time-limited-command.ts";

const PROGRESS_INTERVAL_MS = 1000;
const FINISHED_JOB_MEMORY_MS = 10 * 60_000;
/** A job restarted more often than this after builder restarts is given up: it may be what brings the builder down. */
const MAX_RESUMES = 2;

export interface BuildJobsOptions {
  store: BlobStore;
  builder: ImageBuilder;
  log: Logger;
  /** Where unfinished jobs are journalled. */
  journalDir: string;
  /** How often a running job's record is rewritten even when nothing moved. */
  heartbeatSeconds: number;
  /** Describes the package source in error messages. */
  sourceDescription: string;
  /** The attribute policy, and the places for running and queued jobs. */
  admission: BuildAdmission;
  /** The bucket as the garbage collection's protocol reads it (its sweep markers). */
  sweeps: SweepBucket;
  /** Called after each build that ran (the Nix store's size limit: nix-store-limit.ts). */
  afterBuild?: () => void;
}

interface Journalled {
  request: JobRequest;
  resumes: number;
}

interface Job {
  record: JobRecord;
  /** Writes of the record, one after another, so an older state never lands after a newer one. */
  writing: Promise<void>;
  /** Settles when the job is done or failed. */
  finished: Promise<void>;
  markFinished: () => void;
  /** The heartbeat, and a pending write of progress. */
  timer: NodeJS.Timeout | null;
  flush: NodeJS.Timeout | null;
  lastWriteMs: number;
}

export interface JobCounters {
  started: number;
  done: number;
  failed: number;
}

export class BuildJobs {
  readonly counters: JobCounters = { started: 0, done: 0, failed: 0 };
  private readonly jobs = new Map<string, Job>();
  /** Submissions being decided, per image key: one at a time, so that two at once can't both start a job. */
  private readonly deciding = new Map<string, Promise<unknown>>();

  constructor(private readonly options: BuildJobsOptions) {}

  /** Reports on the image's job, starting one unless a running job, or a finished one with this id, exists. */
  async submit(request: JobRequest): Promise<JobRecord> {
    this.options.admission.checkNames(request.packages);
    this.options.admission.checkCompression(request.compression);
    const key = await imageKey(request.revision, request.system, request.packages, request.compression);
    const answer = (this.deciding.get(key) ?? Promise.resolve()).then(() => this.decide(key, request));
    const settled = answer.catch(() => undefined);
    this.deciding.set(key, settled);
    void settled.then(() => {
      if (this.deciding.get(key) === settled) this.deciding.delete(key);
    });
    const record = await answer;
    const job = this.jobs.get(key);
    const waitMs = (request.waitSeconds ?? 0) * 1000;
    if (waitMs > 0 && job && job.record.jobId === record.jobId && !isFinished(record.phase)) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([job.finished, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
      clearTimeout(timer);
      return job.record;
    }
    return record;
  }

  private async decide(key: string, request: JobRequest): Promise<JobRecord> {
    const current = this.jobs.get(key);
    if (current && (!isFinished(current.record.phase) || current.record.jobId === request.jobId)) return current.record;
    // Done here, its image record perhaps still on its way into the bucket: built all the same.
    if (current?.record.phase === "done" && current.record.image)
      return this.alreadyBuilt(key, request, current.record.image);
    const existing = await getJson(this.options.store, imageRecordKey(key));
    if (isImageRecord(existing)) return this.alreadyBuilt(key, request, existing);
    return this.start(key, request, 0);
  }

  /** Runs again the jobs a previous run of the builder left unfinished. */
  async resumeUnfinished(): Promise<number> {
    await mkdir(this.options.journalDir, { recursive: true });
    let resumed = 0;
    for (const name of await readdir(this.options.journalDir)) {
      const path = join(this.options.journalDir, name);
      let entry: Journalled;
      try {
        entry = JSON.parse(await readFile(path, "utf8")) as Journalled;
      } catch {
        await rm(path, { force: true });
        continue;
      }
      // Journalled by a builder older than zstd layers: gzip.
      const compression = (entry.request.compression as LayerCompression | undefined) ?? "gzip";
      entry.request = { ...entry.request, compression };
      const key = await imageKey(entry.request.revision, entry.request.system, entry.request.packages, compression);
      if (isImageRecord(await getJson(this.options.store, imageRecordKey(key)))) {
        // Finished meanwhile, by another builder the job was given to.
        await rm(path, { force: true });
        continue;
      }
      let refusal: AdmissionError | null = null;
      try {
        // The policy may have changed with the restart.
        this.options.admission.checkNames(entry.request.packages);
      } catch (error) {
        if (!(error instanceof AdmissionError)) throw error;
        refusal = error;
      }
      if (refusal) {
        await this.finish(this.newJob(key, entry.request), "failed", { error: refusal.refusal });
        await rm(path, { force: true });
        continue;
      }
      if (entry.resumes >= MAX_RESUMES) {
        this.options.log.warn("job-abandoned", { imageKey: key, jobId: entry.request.jobId, resumes: entry.resumes });
        const job = this.newJob(key, entry.request);
        await this.finish(job, "failed", {
          error: {
            status: 500,
            code: "BUILD_FAILED",
            message: `the builder restarted ${entry.resumes + 1} times while building this image; it was given up (see the builder's log)`,
          },
        });
        await rm(path, { force: true });
        continue;
      }
      this.options.log.info("job-resumed", { imageKey: key, jobId: entry.request.jobId, resumes: entry.resumes + 1 });
      await this.start(key, entry.request, entry.resumes + 1);
      resumed++;
    }
    return resumed;
  }

  /** Jobs running now. */
  get running(): number {
    return [...this.jobs.values()].filter((job) => !isFinished(job.record.phase)).length;
  }

  private alreadyBuilt(key: string, request: JobRequest, image: ImageRecord): JobRecord {
    const now = new Date().toISOString();
    return {
      imageKey: key,
      jobId: request.jobId,
      request: withoutJobId(request),
      phase: "done",
      phases: [{ phase: "done", at: now }],
      progress: {},
      startedAt: now,
      updatedAt: now,
      heartbeatSeconds: this.options.heartbeatSeconds,
      image,
    };
  }

  private newJob(key: string, request: JobRequest): Job {
    const now = new Date().toISOString();
    let markFinished!: () => void;
    const finished = new Promise<void>((resolve) => (markFinished = resolve));
    const job: Job = {
      finished,
      markFinished,
      record: {
        imageKey: key,
        jobId: request.jobId,
        request: withoutJobId(request),
        phase: "queued",
        phases: [{ phase: "queued", at: now }],
        progress: {},
        startedAt: now,
        updatedAt: now,
        heartbeatSeconds: this.options.heartbeatSeconds,
      },
      writing: Promise.resolve(),
      timer: null,
      flush: null,
      lastWriteMs: 0,
    };
    this.jobs.set(key, job);
    return job;
  }

  private async start(key: string, request: JobRequest, resumes: number): Promise<JobRecord> {
    const { log, store, admission } = this.options;
    // Room is checked and taken in one synchronous step. A resumed job was admitted before the restart: it queues
    // whatever the queue holds.
    if (resumes === 0) admission.checkRoom();
    const slot = admission.slots.acquire();
    const queued = admission.slots.queued > 0;
    const job = this.newJob(key, request);
    this.counters.started++;
    log.info("job-started", {
      imageKey: key,
      jobId: request.jobId,
      packages: request.packages,
      system: request.system,
      revision: request.revision,
      ...(queued ? { queued: admission.slots.queued } : {}),
    });
    try {
      await this.journal(key, { request: { ...withoutJobId(request), jobId: request.jobId }, resumes });
    } catch (error) {
      // The job will not run: its place goes to the next.
      void slot.then((release) => release());
      throw error;
    }
    await Promise.all([
      this.write(job),
      store
        .putObject(recentJobKey(key, Date.parse(job.record.startedAt)), new Uint8Array(), "application/octet-stream")
        .catch((error: unknown) => log.warn("recent-job-marker-failed", { imageKey: key, error: String(error) })),
    ]);
    job.timer = setInterval(() => void this.write(job), this.options.heartbeatSeconds * 1000);
    job.timer.unref();
    void this.run(key, job, slot);
    return job.record;
  }

  private async run(key: string, job: Job, slot: Promise<() => void>): Promise<void> {
    const { builder, store, log } = this.options;
    const release = await slot;
    try {
      const built = await builder.build(job.record.request, key, {
        phase: (phase) => this.enter(job, phase),
        progress: (update) => {
          job.record.progress = { ...job.record.progress, ...update };
          this.touch(job);
        },
      });
      try {
        const image: ImageRecord = {
          oci: built.oci,
          docker: built.docker,
          revision: job.record.request.revision,
          builtAt: new Date().toISOString(),
        };
        // Published only while no garbage collection can take what the image names (gc/sweep-protocol.ts).
        await publishImage(this.options.sweeps, log, key, built.ensureStored, async () => {
          // The job's record says done first; the image record, written last, is what makes the image exist.
          if (job.record.phase !== "done") await this.finish(job, "done", { image });
          await putJson(store, imageRecordKey(key), image);
        });
        job.markFinished();
        this.counters.done++;
        log.info("job-done", { imageKey: key, jobId: job.record.jobId, manifest: image.oci });
      } finally {
        await built.release();
      }
    } catch (error) {
      const failure = this.describe(error, key);
      this.counters.failed++;
      log.warn("job-failed", { imageKey: key, jobId: job.record.jobId, code: failure.code, message: failure.message });
      await this.finish(job, "failed", { error: failure }).catch((writeError: unknown) =>
        log.error("job-record-failed", { imageKey: key, error: String(writeError) }),
      );
      job.markFinished();
    } finally {
      release();
      await rm(this.journalPath(key), { force: true });
      this.options.afterBuild?.();
    }
  }

  private enter(job: Job, phase: JobPhase): void {
    job.record.phase = phase;
    job.record.phases.push({ phase, at: new Date().toISOString() });
    void this.write(job);
  }

  /** Progress within a phase: written now if the last write is old enough, else soon. */
  private touch(job: Job): void {
    if (job.flush) return;
    const wait = job.lastWriteMs + PROGRESS_INTERVAL_MS - Date.now();
    if (wait <= 0) {
      void this.write(job);
      return;
    }
    job.flush = setTimeout(() => {
      job.flush = null;
      if (!isFinished(job.record.phase)) void this.write(job);
    }, wait);
    job.flush.unref();
  }

  private async finish(
    job: Job,
    phase: "done" | "failed",
    extra: { image?: ImageRecord; error?: JobError },
  ): Promise<void> {
    if (job.timer) clearInterval(job.timer);
    if (job.flush) clearTimeout(job.flush);
    job.timer = job.flush = null;
    // A finished job is reported for a while (to whoever polls it), then forgotten: the bucket has its record.
    setTimeout(() => {
      if (this.jobs.get(job.record.imageKey) === job) this.jobs.delete(job.record.imageKey);
    }, FINISHED_JOB_MEMORY_MS).unref();
    job.record = { ...job.record, ...extra };
    this.enter(job, phase);
    await job.writing;
  }

  /** Queues a write of the job's record as it is now; a failed write is logged and retried by the next one. */
  private write(job: Job): Promise<void> {
    job.writing = job.writing.then(async () => {
      job.lastWriteMs = Date.now();
      job.record.updatedAt = new Date().toISOString();
      try {
        await putJson(this.options.store, jobRecordKey(job.record.imageKey), job.record);
      } catch (error) {
        this.options.log.warn("job-record-failed", { imageKey: job.record.imageKey, error: String(error) });
      }
    });
    return job.writing;
  }

  private describe(error: unknown, key: string): JobError {
    const message = error instanceof Error ? error.message : String(error);
    if (error instanceof AdmissionError) return error.refusal;
    if (error instanceof UnknownPackagesError) {
      const detail = { unknown: error.unknown, removed: error.removed, refused: error.refused };
      // Packages that exist but that the package set refuses (broken, unfree, insecure) are denied, not unknown.
      if (error.onlyRefused) return { status: 403, code: "DENIED", message, detail };
      return {
        status: 404,
        code: "MANIFEST_UNKNOWN",
        message: `${message} (package set ${this.options.sourceDescription})`,
        detail,
      };
    }
    if (error instanceof NixTooOldError) {
      return { status: 500, code: "NIX_TOO_OLD", message, detail: { needed: error.needed, have: error.have } };
    }
    if (error instanceof NixBuildError) {
      return {
        status: 500,
        code: "BUILD_FAILED",
        message: `image build failed: ${message}`,
        detail: { failed: error.failed, log: error.logTail },
      };
    }
    // The package set moved since the tag was resolved: the worker resolves again.
    if (error instanceof RevisionUnavailableError) return { status: 409, code: "MANIFEST_UNKNOWN", message };
    // A command past its time limit: the message names the command, the limit and its setting, nothing else.
    if (error instanceof CommandTimeoutError)
      return { status: 500, code: "BUILD_FAILED", message: `image build failed: ${message}` };
    // Anything else (the bucket refusing a write, a bug) is for the operator: the record is public (the worker's
    // /api/builds), and such messages name endpoints and buckets.
    // The id, in the log line and in the record, lets an operator find the one from the other.
    const id = randomUUID();
    this.options.log.error("job-crashed", { id, imageKey: key, error: String((error as Error)?.stack ?? error) });
    const what =
      error instanceof S3Error
        ? "the builder could not write the image into the bucket"
        : "the builder failed unexpectedly";
    return {
      status: 500,
      code: "BUILD_FAILED",
      message: `image build failed: ${what}; the builder's log has the details under id ${id}`,
      detail: { id },
    };
  }

  private journalPath(key: string): string {
    return join(this.options.journalDir, `${key}.json`);
  }

  private async journal(key: string, entry: Journalled): Promise<void> {
    await mkdir(this.options.journalDir, { recursive: true });
    await writeFile(this.journalPath(key), JSON.stringify(entry));
  }
}

/** The build the job is for: the request without the caller's job id and wait. */
function withoutJobId(request: JobRequest): JobRecord["request"] {
  const { jobId: _jobId, waitSeconds: _wait, ...build } = request;
  return build;
}
