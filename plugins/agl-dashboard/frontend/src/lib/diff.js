// Text of a resources version for comparing two versions line by line.
import { diffLines } from "diff";

export function resourceText(resources) {
  const lines = [];
  for (const name of Object.keys(resources || {}).sort()) {
    const { template, ...rest } = resources[name];
    lines.push(`[${name}]`);
    for (const key of Object.keys(rest).sort()) lines.push(`${key}: ${JSON.stringify(rest[key])}`);
    if (template !== undefined) {
      lines.push("template:");
      String(template)
        .split("\n")
        .forEach((line) => lines.push(`  ${line}`));
    }
    lines.push("");
  }
  return lines.join("\n");
}

// [{ kind: "added" | "removed" | "same", text }] per line, from version a to version b.
export function lineDiff(a, b) {
  const out = [];
  for (const part of diffLines(a, b)) {
    const kind = part.added ? "added" : part.removed ? "removed" : "same";
    const lines = part.value.replace(/\n$/, "").split("\n");
    lines.forEach((text) => out.push({ kind, text }));
  }
  return out;
}
