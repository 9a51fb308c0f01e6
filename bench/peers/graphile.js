// graphile-worker's side of bench/peers.R. One process per role, driven by
// that script: a JSON object a line on stdin (a command, with an `id`), a
// JSON object a line on stdout (its answer, with the same `id`).
//
//   node graphile.js runner   a graphile-worker runner (`concurrency` from
//                             BENCH_CONCURRENCY, default 4) with the tasks
//                             "noop" (does nothing) and "stamp" (notes the
//                             wall clock at its start)
//   node graphile.js api      a client that adds jobs (WorkerUtils), as an
//                             API process would
//
// Environment: DATABASE_URL (the PostgreSQL database); PEERS_NODE_DIR, the
// directory npm installed graphile-worker into (outside the repository).
// Times are milliseconds: durations from performance.now(), instants on the
// wall clock (performance.timeOrigin + performance.now()), which the R side
// compares with its own Sys.time() on the same machine. Logs go to stderr;
// stdout carries only the answers.
"use strict";

const path = require("path");
const readline = require("readline");
const { performance } = require("perf_hooks");
const { createRequire } = require("module");

const gw = createRequire(path.join(process.env.PEERS_NODE_DIR, "package.json"))("graphile-worker");
const role = process.argv[2];
const connectionString = process.env.DATABASE_URL;
const concurrency = Number(process.env.BENCH_CONCURRENCY || 4);

const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Errors and warnings only: a line per job would cost CPU, and stdout is
// the protocol. (NO_LOG_SUCCESS=1, set by the R side, skips building them.)
const logger = new gw.Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`graphile-worker ${role} ${level}: ${message}\n`);
  }
});

// The runner: runs jobs, and reports what it saw of them.
async function runner() {
  const started = new Map(); // stamp job's key -> wall clock at its start
  const batches = new Map(); // batch name -> { done, failed, last }
  const roundTrips = new Map(); // round-trip key -> resolve(performance.now() at completion)
  let batchWaiters = [];

  const r = await gw.run({
    connectionString,
    concurrency,
    logger,
    noHandleSignals: true,
    taskList: {
      noop: async () => {},
      stamp: async (payload) => {
        started.set(String(payload.k), wallMs());
      },
    },
  });
  // Emitted once the task has returned and its completion has been sent to
  // the database (graphile-worker does not wait for that write).
  r.events.on("job:complete", ({ job, error }) => {
    const p = job.payload || {};
    if (p.rt !== undefined && roundTrips.has(p.rt)) {
      const resolve = roundTrips.get(p.rt);
      roundTrips.delete(p.rt);
      resolve(performance.now());
    }
    if (p.b !== undefined) {
      const s = batches.get(p.b) || { done: 0, failed: 0, last: 0 };
      s.done += 1;
      if (error) s.failed += 1;
      s.last = wallMs();
      batches.set(p.b, s);
      batchWaiters = batchWaiters.filter((w) => !w(s, p.b));
    }
  });

  return {
    // `n` jobs one after the other, added by this process: from addJob() to
    // the job's completion event, `gap_ms` apart.
    async roundtrip({ n, gap_ms }) {
      const ms = [];
      for (let k = 0; k < n; k++) {
        await sleep(gap_ms);
        const key = `${process.pid}-${k}`;
        const done = new Promise((resolve) => roundTrips.set(key, resolve));
        const t0 = performance.now();
        await r.addJob("noop", { rt: key });
        ms.push((await done) - t0);
      }
      return { ms };
    },
    // Resolves when `n` jobs of batch `b` have completed (or after
    // `timeout_ms`): how many, how many failed, and the wall clock at the last.
    await({ b, n, timeout_ms }) {
      return new Promise((resolve) => {
        const give = (s) => resolve({ done: s.done, failed: s.failed, last: s.last });
        const s = batches.get(b);
        if (s && s.done >= n) return give(s);
        const timer = setTimeout(() => {
          batchWaiters = batchWaiters.filter((w) => w !== waiter);
          give(batches.get(b) || { done: 0, failed: 0, last: NaN });
        }, timeout_ms);
        const waiter = (s2, b2) => {
          if (b2 !== b || s2.done < n) return false;
          clearTimeout(timer);
          give(s2);
          return true;
        };
        batchWaiters.push(waiter);
      });
    },
    // The wall clock at the start of every stamp job run so far, by key.
    stamps() {
      return { started: Object.fromEntries(started) };
    },
    async quit() {
      await r.stop();
      await r.promise.catch(() => {}); // every job's completion written
      return {};
    },
  };
}

// The API: adds jobs, one at a time or all at once.
async function api() {
  const utils = await gw.makeWorkerUtils({ connectionString, logger });
  await utils.migrate();
  return {
    // `n` no-op jobs, `gap_ms` apart, each addJob() timed on its own.
    async submit({ n, gap_ms }) {
      const ms = [];
      for (let i = 0; i < n; i++) {
        await sleep(gap_ms);
        const t0 = performance.now();
        await utils.addJob("noop", { i });
        ms.push(performance.now() - t0);
      }
      return { ms };
    },
    // Removes every job left in the queue (by an earlier run that failed).
    async purge() {
      const rows = await utils.withPgClient(async (client) => {
        return (await client.query("SELECT id, locked_by FROM graphile_worker.jobs")).rows;
      });
      const ids = rows.map((row) => String(row.id));
      const lockers = [...new Set(rows.map((row) => row.locked_by).filter((x) => x))];
      if (lockers.length) await utils.forceUnlockWorkers(lockers); // their runners are gone
      if (ids.length) await utils.completeJobs(ids);
      return { removed: ids.length };
    },
    // One job; the wall clock just before addJob().
    async add({ task, payload }) {
      const t0 = wallMs();
      await utils.addJob(task, payload);
      return { t0 };
    },
    // `n` no-op jobs of batch `b`, one addJob() after the other.
    async single({ n, b }) {
      const t0 = wallMs();
      for (let i = 0; i < n; i++) await utils.addJob("noop", { b, i });
      return { t0, t1: wallMs() };
    },
    // `n` no-op jobs of batch `b` in one addJobs() call.
    async bulk({ n, b }) {
      const specs = [];
      for (let i = 0; i < n; i++) specs.push({ identifier: "noop", payload: { b, i } });
      const t0 = wallMs();
      await utils.addJobs(specs);
      return { t0, t1: wallMs() };
    },
    async quit() {
      await utils.release();
      return {};
    },
  };
}

async function main() {
  const commands = role === "runner" ? await runner() : role === "api" ? await api() : null;
  if (!commands) throw new Error(`usage: node graphile.js runner|api (not ${role})`);
  commands.ping = () => ({ version: require(path.join(process.env.PEERS_NODE_DIR, "node_modules", "graphile-worker", "package.json")).version });
  const say = (x) => process.stdout.write(JSON.stringify(x) + "\n");
  say({ id: 0, ready: true });
  // Commands run in their order, one at a time; the runner's jobs run meanwhile.
  const lines = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve();
  lines.on("line", (line) => {
    queue = queue.then(async () => {
      const msg = JSON.parse(line);
      const f = commands[msg.cmd];
      try {
        if (!f) throw new Error(`unknown command ${msg.cmd}`);
        say({ id: msg.id, ok: true, ...(await f(msg)) });
      } catch (e) {
        say({ id: msg.id, ok: false, error: String((e && e.stack) || e) });
      }
      if (msg.cmd === "quit") process.exit(0);
    });
  });
  // End of input: finish the commands read, then leave.
  lines.on("close", () => queue.then(() => process.exit(0)));
}

main().catch((e) => {
  process.stderr.write(`graphile.js ${role}: ${(e && e.stack) || e}\n`);
  process.exit(1);
});
