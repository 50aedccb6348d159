// Runs the inline script of a dgraph HTML page against a tiny DOM stand-in (no browser):
// every node is hovered and clicked, and its details must name it. Prints "ok <count>".
// Usage: node dom_stub.js page.html
"use strict";
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const script = /<script>([\s\S]*?)<\/script>/.exec(html)[1];
const json = /<script type="application\/json" id="dgraph-data">([\s\S]*?)<\/script>/.exec(html)[1];

function El(tag, attrs) {
  this.tagName = tag;
  this.attrs = attrs || {};
  this.children = [];
  this.listeners = {};
  this.style = {};
  this.className = "";
  this._text = "";
  const cls = new Set((this.attrs["class"] || "").split(/\s+/).filter(Boolean));
  this.classList = {
    add: (c) => cls.add(c),
    remove: (c) => cls.delete(c),
    contains: (c) => cls.has(c),
    toggle: (c, on) => (on ? cls.add(c) : cls.delete(c)),
  };
  this.id = this.attrs.id || "";
}
Object.defineProperty(El.prototype, "textContent", {
  get() { return this._text + this.children.map((c) => c.textContent).join(" "); },
  set(v) { this._text = String(v); this.children = []; },
});
El.prototype.getAttribute = function (k) { return k in this.attrs ? this.attrs[k] : null; };
El.prototype.setAttribute = function (k, v) { this.attrs[k] = String(v); };
El.prototype.appendChild = function (c) { this.children.push(c); return c; };
El.prototype.addEventListener = function (t, f) {
  (this.listeners[t] = this.listeners[t] || []).push(f);
};
El.prototype.fire = function (t, key) {
  (this.listeners[t] || []).forEach((f) => f({ stopPropagation() {}, key: key || "" }));
};
El.prototype.scrollIntoView = function () {};
El.prototype.querySelector = function () { return null; };
global.Node = El;

const unescape = (s) => s.replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&lt;/g, "<")
  .replace(/&gt;/g, ">").replace(/&amp;/g, "&");
function collect(re) {
  const out = [];
  let m;
  while ((m = re.exec(html))) {
    const attrs = {};
    const ar = /([\w-]+)="([^"]*)"/g;
    let a;
    while ((a = ar.exec(m[1]))) { attrs[a[1]] = unescape(a[2]); }
    out.push(new El("g", attrs));
  }
  return out;
}
const nodes = collect(/<g (class="node [^>]*)>/g);
const edges = collect(/<g (class="edge[ "][^>]*)>/g);
const svgOpen = /<svg ([^>]*)>/.exec(html)[1];
const svg = collect(/<svg ([^>]*)>/g)[0] || new El("svg", {});
svg.querySelectorAll = (sel) => (sel === "g.node" ? nodes : sel === "g.edge" ? edges : []);
const canvas = new El("section");
canvas.clientWidth = 800;
canvas.clientHeight = 400;
const find = new El("input");
find.value = "";
const byId = {
  "dgraph-data": { textContent: json },
  details: new El("div"),
  "zoom-level": new El("span"),
  canvas: canvas,
  find: find,
};
const problemItems = collect(/<li (class="[^"]*" data-node="[^"]*")>/g);
global.document = {
  getElementById: (id) => byId[id],
  querySelector: (sel) => (sel === "#canvas svg" ? svg : null),
  querySelectorAll: (sel) => (sel === "#problems li[data-node]" ? problemItems : []),
  createElement: (t) => new El(t),
  createTextNode: (t) => ({ textContent: t }),
  addEventListener: () => {},
};
if (!svgOpen) { throw new Error("no svg"); }
eval(script); // eslint-disable-line no-eval

let count = 0;
for (const g of nodes) {
  const name = g.getAttribute("data-node");
  g.fire("mouseenter");
  if (byId.details.textContent.indexOf(name) < 0) { throw new Error("details miss " + name); }
  if (byId.details.textContent.indexOf("params") < 0) { throw new Error("no params " + name); }
  g.fire("click");
  if (!g.classList.contains("selected")) { throw new Error("click did not pin " + name); }
  g.fire("mouseleave");
  g.fire("click");
  count += 1;
}
problemItems.forEach((li) => li.fire("click"));
find.value = nodes.length ? nodes[0].getAttribute("data-node") : "";
find.fire("input");
find.fire("keydown", "Enter");
console.log("ok " + count);
