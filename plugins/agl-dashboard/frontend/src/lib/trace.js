// A trace's spans as a tree (parent/child by span id) laid out for a waterfall.

// Rows in depth-first order: { span, depth, children }. Spans whose parent is not in the trace are roots.
// Siblings are ordered by start time, then by sequence id.
export function spanTree(spans) {
  const byId = new Map(spans.map((span) => [span.span_id, { span, children: [] }]));
  const roots = [];
  for (const node of byId.values()) {
    const parent = node.span.parent_id ? byId.get(node.span.parent_id) : undefined;
    if (parent && parent !== node) parent.children.push(node);
    else roots.push(node);
  }
  const order = (a, b) =>
    (a.span.start_time ?? 0) - (b.span.start_time ?? 0) || (a.span.sequence_id ?? 0) - (b.span.sequence_id ?? 0);
  const rows = [];
  const seen = new Set();
  const visit = (node, depth) => {
    if (seen.has(node.span.span_id)) return; // a cycle in bad data: show each span once
    seen.add(node.span.span_id);
    rows.push({ span: node.span, depth, childCount: node.children.length });
    node.children.sort(order).forEach((child) => visit(child, depth + 1));
  };
  roots.sort(order).forEach((root) => visit(root, 0));
  for (const node of byId.values()) if (!seen.has(node.span.span_id)) visit(node, 0);
  return rows;
}

// The time window the waterfall spans: earliest start to latest end (a point in time gets a small width).
export function traceWindow(spans) {
  let start = Infinity;
  let end = -Infinity;
  for (const span of spans) {
    const s = span.start_time ?? span.end_time;
    const e = span.end_time ?? span.start_time;
    if (s != null) start = Math.min(start, s);
    if (e != null) end = Math.max(end, e);
  }
  if (!Number.isFinite(start)) return { start: 0, end: 1 };
  if (end <= start) end = start + 0.001;
  return { start, end };
}

// Where a span's bar sits, in percent of the window.
export function barGeometry(span, window) {
  const width = window.end - window.start;
  const s = span.start_time ?? span.end_time ?? window.start;
  const e = span.end_time ?? s;
  const left = ((s - window.start) / width) * 100;
  return { left, width: Math.max(((e - s) / width) * 100, 0.4) };
}
