// Graph format cross-check with the real jinaga.js serializer and deserializer.
//   node graph.js write  < [{type, fields, predecessors}] (predecessors as {role: {type, hash}}),
//                          facts in topological order -> the graph jinaga.js writes, on stdout
//   node graph.js read   < graph -> [{type, hash, fields, predecessors}] as jinaga.js reads it
const { serializeGraph } = require("jinaga/dist/http/serializer");
const { GraphDeserializer } = require("jinaga/dist/http/deserializer");
const { computeHash } = require("jinaga/dist/fact/hash");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", async () => {
  if (process.argv[2] === "write") {
    const facts = JSON.parse(input);
    const envelopes = facts.map((f) => ({
      fact: { ...f, hash: computeHash(f.fields, f.predecessors) },
      signatures: [],
    }));
    process.stdout.write(serializeGraph(envelopes));
  } else {
    const lines = input.split("\n");
    if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
    let i = 0;
    const reader = new GraphDeserializer(async () => (i < lines.length ? lines[i++] : null));
    const out = [];
    await reader.read(async (envelopes) => {
      for (const e of envelopes) out.push(e.fact);
    });
    process.stdout.write(JSON.stringify(out));
  }
});
