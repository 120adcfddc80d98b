// Reads [{type, fields, predecessors}] as JSON on stdin; writes one jinaga.js hash per line.
// Predecessors are {role: {type, hash}} or {role: [{type, hash}, ...]}, as jinaga stores them.
const { computeHash } = require("jinaga/dist/fact/hash");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const facts = JSON.parse(input);
  const out = facts.map((f) => computeHash(f.fields, f.predecessors));
  process.stdout.write(out.join("\n") + "\n");
});
