// CPU time from Linux's /proc, for the benchmark's figures of who used the cores: a thread, or every process of a
// name (the local bucket's workerd).
import { readdirSync, readFileSync } from "node:fs";

/** Linux's USER_HZ, the unit of the CPU times in /proc/<pid>/stat, on every architecture it runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

/** User and system CPU time in a /proc stat file (a process's or a thread's), in milliseconds; throws if unreadable. */
export function statCpuMs(statFile: string): number {
  const stat = readFileSync(statFile, "utf8");
  // Fields after the command name (which may hold spaces and parentheses, hence from the last ")"): utime and
  // stime are the 14th and 15th of the whole line.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** CPU time used so far by the running processes of that name, in milliseconds. */
export function cpuOfProcessesNamed(name: string): number {
  let ms = 0;
  for (const pid of readdirSync("/proc").filter((entry) => /^\d+$/.test(entry))) {
    try {
      if (readFileSync(`/proc/${pid}/comm`, "utf8").trim() === name) ms += statCpuMs(`/proc/${pid}/stat`);
    } catch {
      // Gone meanwhile.
    }
  }
  return ms;
}
