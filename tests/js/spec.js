// Prints, as JSON {name: {request, feeds}}, the POST /feeds bodies the real jinaga.js 6.11 writes for a set of
// specifications (the same calls HttpNetwork.feeds makes), for tests/jinaga/test_jinaga_spec.py.
const { buildModel } = require("jinaga");
const { describeDeclaration, describeSpecification } = require("jinaga/dist/specification/description");
const { reduceSpecification } = require("jinaga/dist/specification/specification");
const { computeHash } = require("jinaga/dist/fact/hash");
const { buildFeeds } = require("jinaga/dist/specification/feed-builder");

class Store { static Type = "Shop.Store"; type = Store.Type; constructor(identifier) { this.identifier = identifier; } }
class Order { static Type = "Shop.Order"; type = Order.Type; constructor(store, number) { this.store = store; this.number = number; } }
class Cancelled { static Type = "Shop.Order.Cancelled"; type = Cancelled.Type; constructor(order) { this.order = order; } }
class Restored { static Type = "Shop.Order.Restored"; type = Restored.Type; constructor(cancelled) { this.cancelled = cancelled; } }
class Line { static Type = "Shop.Line"; type = Line.Type; constructor(order, sku) { this.order = order; this.sku = sku; } }
class Shipment { static Type = "Shop.Shipment"; type = Shipment.Type; constructor(order) { this.order = order; } }

const model = buildModel((b) =>
  b.type(Store)
    .type(Order, (m) => m.predecessor("store", Store))
    .type(Cancelled, (m) => m.predecessor("order", Order))
    .type(Restored, (m) => m.predecessor("cancelled", Cancelled))
    .type(Line, (m) => m.predecessor("order", Order))
    .type(Shipment, (m) => m.predecessor("order", Order))
);

const specs = {
  successors: model.given(Store).match((s) => s.successors(Order, (o) => o.store)),
  notExists: model.given(Store).match((s) =>
    s.successors(Order, (o) => o.store).notExists((o) => o.successors(Cancelled, (c) => c.order))),
  exists: model.given(Store).match((s) =>
    s.successors(Order, (o) => o.store).exists((o) => o.successors(Shipment, (x) => x.order))),
  twoSteps: model.given(Store).match((s) =>
    s.successors(Order, (o) => o.store).selectMany((o) => o.successors(Line, (l) => l.order))),
  projection: model.given(Store).match((s) =>
    s.successors(Order, (o) => o.store)
      .notExists((o) => o.successors(Cancelled, (c) => c.order))
      .select((o) => ({ number: o.number, lines: o.successors(Line, (l) => l.order).select((l) => l.sku) }))),
  predecessor: model.given(Line).match((l) => l.order.predecessor()),
  nested: model.given(Store).match((s) =>
    s.successors(Order, (o) => o.store).notExists((o) =>
      o.successors(Cancelled, (c) => c.order).notExists((c) => c.successors(Restored, (r) => r.cancelled)))),
  twoGivens: model.given(Store, Order).match((s, o) => s.successors(Order, (x) => x.store).join((x) => x, o)),
};

const store = new Store("north");
const order = new Order(store, 1);
const line = new Line(order, "a");
const starts = { Store: store, Order: order, Line: line };
function reference(fact) {
  const { type, ...rest } = fact;
  const fields = {}, predecessors = {};
  for (const [k, v] of Object.entries(rest)) {
    if (v && typeof v === "object") predecessors[k] = reference(v);
    else fields[k] = v;
  }
  return { type, hash: computeHash(fields, predecessors) };
}

const out = {};
for (const [name, spec] of Object.entries(specs)) {
  const s = reduceSpecification(spec.specification);
  const refs = s.given.map((g) => reference(starts[g.label.type.split(".").pop()]));
  out[name] = {
    request: `${describeDeclaration(refs, s.given.map((g) => g.label))}\n${describeSpecification(s, 0)}`,
    // The feeds jinaga.js's own replicator code builds for it (factbus must deliver the same facts).
    feeds: buildFeeds(s).map((f) => describeSpecification(f, 0)),
  };
}
out.__start = reference(store);
console.log(JSON.stringify(out));
