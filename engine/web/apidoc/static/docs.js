// Renders /openapi.json: operations grouped by tag, each with its parameters, request body and
// replies, and every component schema. Hand-written for gaud-engine (MIT, as the project); builds
// the page with DOM calls and textContent only, and fetches nothing but /openapi.json.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function refName(ref) {
  return ref.startsWith("#/components/schemas/") ? ref.slice("#/components/schemas/".length) : null;
}

function refsIn(value, found) {
  if (Array.isArray(value)) value.forEach((item) => refsIn(item, found));
  else if (value && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) {
      if (key === "$ref" && typeof item === "string" && refName(item)) found.add(refName(item));
      else refsIn(item, found);
    }
  }
  return found;
}

function schemaBlock(schema) {
  const block = el("div", { class: "schema" });
  const name = schema && schema.$ref ? refName(schema.$ref) : null;
  if (name) {
    block.append(el("a", { href: "#schema-" + name }, name));
    return block;
  }
  block.append(el("pre", {}, JSON.stringify(schema, null, 2)));
  const refs = [...refsIn(schema, new Set())];
  if (refs.length) {
    const list = el("p", {}, "Uses: ");
    refs.forEach((ref) => list.append(el("a", { href: "#schema-" + ref }, ref), " "));
    block.append(list);
  }
  return block;
}

function contentTable(content) {
  const table = el("table", {});
  for (const [media, body] of Object.entries(content || {})) {
    table.append(el("tr", {}, el("td", {}, el("code", {}, media)), el("td", {}, body.schema ? schemaBlock(body.schema) : "")));
  }
  return table;
}

function operationBlock(method, path, op, doc) {
  const security = op.security !== undefined ? op.security : doc.security || [];
  const summary = el("summary", {},
    el("span", { class: "method " + method }, method),
    el("span", { class: "path" }, path),
    el("span", { class: "summary" }, op.summary || ""),
    security.length ? el("span", { class: "lock", title: "needs an API key" }, "key") : null);
  const body = el("div", {});
  if (op.description) body.append(el("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, "")));
    op.parameters.forEach((p) => table.append(el("tr", {},
      el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, p.description || (p.required ? "required" : "")))));
    body.append(el("h4", {}, "Parameters"), table);
  }
  if (op.requestBody) body.append(el("h4", {}, "Request body"), contentTable(op.requestBody.content));
  body.append(el("h4", {}, "Replies"));
  for (const [status, reply] of Object.entries(op.responses || {})) {
    body.append(el("p", {}, el("strong", {}, status), " ", reply.description || ""), contentTable(reply.content));
  }
  const id = "op-" + method + "-" + path.replace(/[^A-Za-z0-9]+/g, "-");
  return el("details", { class: "op", id: id }, summary, body);
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.title = doc.info.title + " API " + doc.info.version;
  const groups = new Map((doc.tags || []).map((tag) => [tag.name, []]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "Other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operationBlock(method, path, op, doc));
    }
  }
  const operations = document.getElementById("operations");
  const toc = document.getElementById("toc");
  for (const [tag, blocks] of groups) {
    if (!blocks.length) continue;
    const anchor = "tag-" + tag.replace(/[^A-Za-z0-9]+/g, "-");
    toc.append(el("a", { href: "#" + anchor }, tag));
    operations.append(el("h2", { id: anchor }, tag), ...blocks);
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((doc.components || {}).schemas || {})) {
    schemas.append(el("details", { class: "op", id: "schema-" + name },
      el("summary", {}, el("code", {}, name)), el("div", {}, schemaBlock(schema))));
  }
  document.getElementById("schemas-heading").hidden = false;
  document.getElementById("status").remove();
}

// A link to a schema opens it.
window.addEventListener("hashchange", () => {
  const target = document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") target.open = true;
});

fetch("/openapi.json", { headers: { accept: "application/json" } })
  .then((reply) => {
    if (!reply.ok) throw new Error("/openapi.json answered " + reply.status);
    return reply.json();
  })
  .then(render)
  .catch((error) => {
    const status = document.getElementById("status");
    status.className = "error";
    status.textContent = "Could not load the API description: " + error.message;
  });
