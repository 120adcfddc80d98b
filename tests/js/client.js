// An unmodified jinaga.js 6.11 client, driven by tests/jinaga/test_jinaga_endpoints.py.
//   node client.js save  URL  < {"store": "north", "orders": [1, 2], "cancel": [2], "lines": {"1": ["a"]}}
//       j.fact(...) each fact; prints {"facts": [{"type", "hash"}]} with the hashes jinaga.js computed
//   node client.js query URL  < {"store": "north"}
//       orders of the store that are not cancelled, with their lines; prints them as JSON
//   node client.js watch URL  < {"store": "north", "expect": [1, 3, 4], "timeout": 30}
//       j.subscribe(...) to the same specification (streamed feeds); prints the order numbers once
//       the open orders are exactly `expect`; exits 2 on timeout
const { JinagaClient, buildModel } = require("jinaga");

class Store {
  static Type = "Shop.Store";
  type = Store.Type;
  constructor(identifier) { this.identifier = identifier; }
}
class Order {
  static Type = "Shop.Order";
  type = Order.Type;
  constructor(store, number) { this.store = store; this.number = number; }
}
class Cancelled {
  static Type = "Shop.Order.Cancelled";
  type = Cancelled.Type;
  constructor(order) { this.order = order; }
}
class Line {
  static Type = "Shop.Line";
  type = Line.Type;
  constructor(order, sku) { this.order = order; this.sku = sku; }
}

const model = buildModel((b) =>
  b.type(Store)
    .type(Order, (m) => m.predecessor("store", Store))
    .type(Cancelled, (m) => m.predecessor("order", Order))
    .type(Line, (m) => m.predecessor("order", Order))
);

// One given, a successor step by role, a !E condition, and a child specification.
const openOrders = model.given(Store).match((store) =>
  store.successors(Order, (o) => o.store)
    .notExists((o) => o.successors(Cancelled, (c) => c.order))
    .select((o) => ({
      number: o.number,
      lines: o.successors(Line, (l) => l.order).select((l) => l.sku),
    }))
);

async function readStdin() {
  let input = "";
  process.stdin.setEncoding("utf8");
  for await (const chunk of process.stdin) input += chunk;
  return JSON.parse(input);
}

async function main() {
  const [command, url] = process.argv.slice(2);
  const args = await readStdin();
  const j = JinagaClient.create({ httpEndpoint: url, feedRefreshIntervalSeconds: 60 });
  const store = new Store(args.store);
  if (command === "save") {
    const facts = [];
    const keep = async (fact) => {
      const saved = await j.fact(fact);
      facts.push({ type: saved.type, hash: j.hash(saved) });
      return saved;
    };
    await keep(store);
    const orders = {};
    for (const number of args.orders || []) orders[number] = await keep(new Order(store, number));
    for (const number of args.cancel || []) await keep(new Cancelled(orders[number]));
    for (const [number, skus] of Object.entries(args.lines || {}))
      for (const sku of skus) await keep(new Line(orders[number], sku));
    // j.fact resolves once the fact is queued; wait until the replicator took it.
    await j.push();
    console.log(JSON.stringify({ facts }));
  } else if (command === "query") {
    const results = await j.query(openOrders, store);
    const plain = results
      .map((r) => ({ number: r.number, lines: [...r.lines].sort() }))
      .sort((a, b) => a.number - b.number);
    console.log(JSON.stringify({ orders: plain }));
  } else if (command === "watch") {
    const seen = new Set();
    const wanted = JSON.stringify([...args.expect].sort((a, b) => a - b));
    let done;
    const finished = new Promise((resolve) => (done = resolve));
    const check = () => {
      if (JSON.stringify([...seen].sort((a, b) => a - b)) === wanted) done();
    };
    const observer = j.subscribe(openOrders, store, (o) => {
      seen.add(o.number);
      check();
      return () => {
        seen.delete(o.number); // removed: the order was cancelled
        check();
      };
    });
    await observer.loaded();
    console.error("loaded"); // on stderr: the test waits for it before publishing
    const timer = setTimeout(() => {
      console.log(JSON.stringify({ orders: [...seen].sort((a, b) => a - b), timeout: true }));
      process.exit(2);
    }, args.timeout * 1000);
    await finished;
    clearTimeout(timer);
    observer.stop();
    console.log(JSON.stringify({ orders: [...seen].sort((a, b) => a - b) }));
    process.exit(0);
  } else {
    throw new Error(`unknown command ${command}`);
  }
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
