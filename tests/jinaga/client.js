// A jinaga.js 6.11.3 client (the unmodified npm package) driven by the bridge tests.
//
//   node client.js save  <httpEndpoint>   stdin: {"facts": [F...]}
//       saves each fact with j.fact(), in order; prints {"hashes": [...]} (j.hash of each)
//   node client.js query <httpEndpoint>   stdin: {"facts": [F...], "given": i, "successor": T, "role": r}
//       j.query(model.given(G).match(g => g.successors(T, s => s[r])), facts[i]) with a fresh
//       client; prints {"results": [{"hash", "type", "fields"}...]}
//
//   node client.js spec  -                stdin: {"root": {"type", "hash"}, "successor": T, "role": r}
//       prints {"text": ...}: the text jinaga.js POSTs to /feeds for that query
//
// F = {"type": T, "fields": {...}, "predecessors": {role: index | [indices]}}; indices point to
// earlier facts of the same list, which become nested jinaga.js fact objects.
// jinaga is resolved from scripts/jinaga-server/node_modules (pinned by its package-lock).
"use strict";
const path = require("path");
const jinagaPath = require.resolve("jinaga", {
    paths: [path.join(__dirname, "..", "..", "scripts", "jinaga-server")],
});
const { JinagaClient, buildModel, describeDeclaration, describeSpecification } = require(jinagaPath);

function build(facts) {
    const objects = [];
    for (const f of facts) {
        const o = { type: f.type, ...f.fields };
        for (const [role, ref] of Object.entries(f.predecessors || {})) {
            o[role] = Array.isArray(ref) ? ref.map((i) => objects[i]) : objects[ref];
        }
        objects.push(o);
    }
    return objects;
}

function ctor(type) {
    const C = class {};
    C.Type = type;
    return C;
}

async function main() {
    const [command, endpoint] = process.argv.slice(2);
    let input = "";
    for await (const chunk of process.stdin) input += chunk;
    const request = JSON.parse(input || "{}");
    if (command === "spec") {
        const Given = ctor(request.root.type);
        const Successor = ctor(request.successor);
        const model = buildModel((b) =>
            b.type(Given).type(Successor, (m) => m.predecessor(request.role, Given))
        );
        const spec = model.given(Given).match((g) => g.successors(Successor, (s) => s[request.role]));
        const start = [{ type: request.root.type, hash: request.root.hash }];
        const text =
            describeDeclaration(start, spec.specification.given.map((g) => g.label)) +
            describeSpecification(spec.specification, 0);
        process.stdout.write(JSON.stringify({ text }) + "\n");
        return;
    }
    const j = JinagaClient.create({ httpEndpoint: endpoint });
    const objects = build(request.facts);
    if (command === "save") {
        const hashes = [];
        for (const o of objects) {
            await j.fact(o);
            hashes.push(j.hash(o));
        }
        process.stdout.write(JSON.stringify({ hashes }) + "\n");
    } else if (command === "query") {
        const given = objects[request.given];
        const Given = ctor(given.type);
        const Successor = ctor(request.successor);
        const model = buildModel((b) =>
            b.type(Given).type(Successor, (m) => m.predecessor(request.role, Given))
        );
        const spec = model.given(Given).match((g) => g.successors(Successor, (s) => s[request.role]));
        const found = await j.query(spec, given);
        const results = found.map((r) => {
            const fields = {};
            for (const [k, v] of Object.entries(r)) {
                if (k !== "type" && (v === null || typeof v !== "object" || Array.isArray(v))) fields[k] = v;
            }
            return { hash: j.hash(r), type: r.type, fields };
        });
        process.stdout.write(JSON.stringify({ results }) + "\n");
    } else {
        throw new Error(`unknown command ${command}`);
    }
}

main().then(
    // exit only once stdout is flushed: a pipe takes 64 KiB before it blocks
    () => process.stdout.write("", () => process.exit(0)),
    (e) => {
        console.error(e && e.stack ? e.stack : String(e));
        process.exit(1);
    }
);
