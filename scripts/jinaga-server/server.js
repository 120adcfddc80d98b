// A minimal, unmodified jinaga-server (npm) on PostgreSQL, for factbus's bridge tests.
//
// Environment:
//   JINAGA_PG_STORE    PostgreSQL URL of the database made from the package's setup.sql (required:
//                      without it jinaga-server silently falls back to a memory store)
//   JINAGA_PORT        TCP port on 127.0.0.1 (default 0 = any free port)
//   JINAGA_UPSTREAM    optional URL of an upstream replicator (e.g. a factbus sidecar's /jinaga):
//                      every fact saved here is forwarded there (OPTIONS + POST /save)
//   JINAGA_QUEUE_DELAY_MS  delay before the upstream queue is processed (default 100)
//   JINAGA_PIDFILE     optional file this process writes its pid to
//   JINAGA_MEMORY_FORWARDER=1 with JINAGA_UPSTREAM and no JINAGA_PG_STORE: run on jinaga-server's
//                      memory store as a mere forwarder to the upstream (see docs/jinaga.md,
//                      surprise 9); without it, a missing JINAGA_PG_STORE is refused
//
// Serves the replicator under /jinaga and prints one line "listening http://127.0.0.1:<port>/jinaga"
// on stdout once it accepts connections. SIGTERM/SIGINT close the server and the pool.
"use strict";
const express = require("express");
const { JinagaServer } = require("jinaga-server");

const pgStore = process.env.JINAGA_PG_STORE;
const memoryForwarder = process.env.JINAGA_MEMORY_FORWARDER === "1";
if (!pgStore && !(memoryForwarder && process.env.JINAGA_UPSTREAM)) {
    console.error("JINAGA_PG_STORE is not set (refusing jinaga-server's memory-store fallback)");
    process.exit(2);
}
if (!pgStore) {
    // Only to forward saves upstream: jinaga-server 3.7.5 forwards nothing when it has a
    // PostgreSQL store (its PostgresQueue is a stub), and forwards at once without one.
    // Nothing survives a restart and clients that query it poll forever: never serve
    // clients' queries from it.
    console.error("warning: memory store, used as a forwarder to " + process.env.JINAGA_UPSTREAM);
}
const port = Number(process.env.JINAGA_PORT || "0");
const upstream = process.env.JINAGA_UPSTREAM ? [process.env.JINAGA_UPSTREAM] : [];

if (process.env.JINAGA_PIDFILE) {
    require("fs").writeFileSync(process.env.JINAGA_PIDFILE, `${process.pid}\n`);
}

const app = express();
app.use(express.json({ limit: "10mb" }));
app.use(express.text({ limit: "10mb" }));

const { handler, close } = JinagaServer.create({
    pgStore: pgStore || undefined,
    upstreamReplicators: upstream,
    queueProcessingDelayMs: Number(process.env.JINAGA_QUEUE_DELAY_MS || "100"),
});
app.use("/jinaga", handler);

const server = app.listen(port, "127.0.0.1", () => {
    const address = server.address();
    console.log(`listening http://127.0.0.1:${address.port}/jinaga`);
});

let stopping = false;
function stop() {
    if (stopping) return;
    stopping = true;
    server.close(() => {
        close().finally(() => process.exit(0));
    });
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
