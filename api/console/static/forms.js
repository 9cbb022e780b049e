// A form for any processor, built from its params JSON Schema (GET /api/v1/processors): no
// processor has a form of its own. Each field returns its value, or undefined when left unset
// (the processor's default then applies).

import { el } from "./dom.js";

let counter = 0;
const uid = (name) => `f${++counter}-${name.replace(/[^a-z0-9_-]/gi, "")}`;

export function paramsForm(schema, columns) {
  const defs = schema.$defs || {};
  const field = objectField("params", schema, defs, columns, true);
  return { element: field.element, read: () => field.read() || {} };
}

function resolve(schema, defs) {
  if (schema && schema.$ref) return defs[schema.$ref.split("/").pop()] || {};
  return schema || {};
}

function describe(schema, name) {
  return schema.title || name.replace(/_/g, " ");
}

function help(schema) {
  return schema.description ? el("small", { class: "help" }, schema.description) : null;
}

function build(name, raw, defs, columns, required) {
  const schema = resolve(raw, defs);
  if (schema.anyOf || schema.oneOf) return choiceField(name, schema, defs, columns, required);
  if (schema.enum) return enumField(name, schema, required);
  if (schema.type === "object" || schema.properties) {
    return objectField(name, schema, defs, columns, required);
  }
  if (schema.type === "boolean") return booleanField(name, schema);
  if (schema.type === "integer" || schema.type === "number") return numberField(name, schema);
  if (schema.type === "array") return arrayField(name, schema, defs, columns);
  if (schema.type === "string") return stringField(name, schema, columns);
  return jsonField(name, schema);
}

function labelled(name, schema, input, required) {
  const label = el("label", { for: input.id }, describe(schema, name), required ? " *" : "");
  return el("div", { class: "field" }, label, input, help(schema));
}

function objectField(name, schema, defs, columns, required) {
  const props = schema.properties || {};
  const needed = new Set(schema.required || []);
  const fields = Object.entries(props).map(([key, sub]) => [
    key,
    build(key, { ...resolve(sub, defs), ...pick(sub) }, defs, columns, needed.has(key)),
  ]);
  const body = fields.map(([, f]) => f.element);
  const element =
    name === "params"
      ? el("div", { class: "params" }, ...body)
      : el("fieldset", {}, el("legend", {}, describe(schema, name)), help(schema), ...body);
  return {
    element,
    read() {
      const value = {};
      for (const [key, f] of fields) {
        const v = f.read();
        if (v !== undefined) value[key] = v;
      }
      return Object.keys(value).length || required ? value : undefined;
    },
  };
}

// Keep a property's own title, description and default over those of its $ref target.
function pick(schema) {
  const out = {};
  for (const key of ["title", "description", "default"]) if (key in schema) out[key] = schema[key];
  return out;
}

function choiceField(name, schema, defs, columns, required) {
  const options = (schema.anyOf || schema.oneOf).filter((s) => s.type !== "null");
  const nullable = options.length < (schema.anyOf || schema.oneOf).length;
  if (options.length === 1) {
    const merged = { ...resolve(options[0], defs), ...pick(schema), title: describe(schema, name) };
    const isObject = merged.type === "object" || merged.properties;
    if (!(nullable && isObject)) return build(name, merged, defs, columns, required && !nullable);
    // An optional group of settings (fill nulls, scale): off until asked for.
    const inner = build(name, merged, defs, columns, true);
    const box = el("input", { type: "checkbox", id: uid(`use-${name}`) });
    inner.element.hidden = true;
    box.addEventListener("change", () => {
      inner.element.hidden = !box.checked;
    });
    const element = el(
      "div",
      { class: "optional" },
      el("div", { class: "field check" }, box, el("label", { for: box.id }, describe(merged, name))),
      inner.element,
    );
    return { element, read: () => (box.checked ? inner.read() : undefined) };
  }
  // Several kinds (true or {subset}; a number or a text): pick the kind, then fill it in.
  const select = el("select", { id: uid(name) }, el("option", { value: "" }, "(not set)"));
  options.forEach((option, i) => {
    const resolved = resolve(option, defs);
    select.append(el("option", { value: String(i) }, resolved.title || resolved.type || "value"));
  });
  const holder = el("div", { class: "choice" });
  let current = null;
  select.addEventListener("change", () => {
    holder.replaceChildren();
    current = null;
    if (select.value === "") return;
    const option = resolve(options[Number(select.value)], defs);
    current = build(name, { ...option, title: `${describe(schema, name)} value` }, defs, columns);
    holder.append(current.element);
  });
  const element = labelled(name, schema, select, required);
  element.append(holder);
  return { element, read: () => (current ? current.read() : undefined) };
}

function enumField(name, schema, required) {
  const select = el("select", { id: uid(name) });
  if (!required || schema.default !== undefined) {
    select.append(el("option", { value: "" }, `(default${fmtDefault(schema)})`));
  }
  for (const value of schema.enum) select.append(el("option", { value }, String(value)));
  return { element: labelled(name, schema, select, required), read: () => select.value || undefined };
}

function fmtDefault(schema) {
  return schema.default !== undefined && schema.default !== null ? `: ${schema.default}` : "";
}

function booleanField(name, schema) {
  const box = el("input", { type: "checkbox", id: uid(name) });
  box.checked = schema.default === true;
  const element = el(
    "div",
    { class: "field check" },
    box,
    el("label", { for: box.id }, describe(schema, name)),
    help(schema),
  );
  return { element, read: () => (box.checked === (schema.default === true) ? undefined : box.checked) };
}

function numberField(name, schema) {
  const attrs = { type: "number", id: uid(name), step: schema.type === "integer" ? "1" : "any" };
  if (schema.minimum !== undefined) attrs.min = schema.minimum;
  if (schema.maximum !== undefined) attrs.max = schema.maximum;
  if (schema.default !== undefined && schema.default !== null) attrs.placeholder = schema.default;
  const input = el("input", attrs);
  return {
    element: labelled(name, schema, input, false),
    read: () => (input.value === "" ? undefined : Number(input.value)),
  };
}

function isColumnName(name) {
  return /(^|_)columns?$/.test(name) || name === "subset";
}

function stringField(name, schema, columns) {
  if (isColumnName(name) && columns.length) {
    const select = el("select", { id: uid(name) }, el("option", { value: "" }, "(none)"));
    for (const c of columns) select.append(el("option", { value: c.name }, `${c.name} (${c.type})`));
    return { element: labelled(name, schema, select, false), read: () => select.value || undefined };
  }
  const input = el("input", { type: "text", id: uid(name) });
  return {
    element: labelled(name, schema, input, false),
    read: () => (input.value === "" ? undefined : input.value),
  };
}

function arrayField(name, schema, defs, columns) {
  const items = resolve(schema.items || (schema.prefixItems || [])[0] || {}, defs);
  const choices = items.enum || (isColumnName(name) ? columns.map((c) => c.name) : null);
  if (choices && choices.length) {
    const boxes = choices.map((value) => {
      const box = el("input", { type: "checkbox", id: uid(`${name}-${value}`), value });
      return [box, el("label", { class: "pill" }, box, String(value))];
    });
    const group = el(
      "fieldset",
      { class: "field pills" },
      el("legend", {}, describe(schema, name)),
      help(schema),
      ...boxes.map(([, label]) => label),
    );
    return {
      element: group,
      read() {
        const picked = boxes.filter(([box]) => box.checked).map(([box]) => box.value);
        return picked.length ? picked : undefined;
      },
    };
  }
  const input = el("input", { type: "text", id: uid(name), placeholder: "comma-separated" });
  const numeric = items.type === "integer" || items.type === "number";
  return {
    element: labelled(name, schema, input, false),
    read() {
      const parts = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (!parts.length) return undefined;
      return numeric ? parts.map(Number) : parts;
    },
  };
}

function jsonField(name, schema) {
  const area = el("textarea", { id: uid(name), rows: 2, placeholder: "JSON" });
  return {
    element: labelled(name, schema, area, false),
    read: () => (area.value.trim() ? JSON.parse(area.value) : undefined),
  };
}
