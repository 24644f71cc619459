// A builder Logger that keeps what it is told, for tests that assert on the builder's log events.
import type { LogFields, Logger } from "../../builder-service/log.ts";

export interface LoggedEntry {
  level: "info" | "warn" | "error";
  event: string;
  fields: LogFields;
}

export class RecordingLogger implements Logger {
  entries: LoggedEntry[] = [];

  info(event: string, fields: LogFields = {}): void {
    this.entries.push({ level: "info", event, fields });
  }

  warn(event: string, fields: LogFields = {}): void {
    this.entries.push({ level: "warn", event, fields });
  }

  error(event: string, fields: LogFields = {}): void {
    this.entries.push({ level: "error", event, fields });
  }

  clear(): void {
    this.entries = [];
  }
}
