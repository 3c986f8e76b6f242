// Two versions of a resources set, line by line: removed lines red, added lines green.
import { Code, Text } from "@mantine/core";
import { lineDiff, resourceText } from "../lib/diff.js";

const BACKGROUND = { added: "#d3f9d8", removed: "#ffe3e3", same: "transparent" };
const SIGN = { added: "+", removed: "-", same: " " };

export function VersionDiff({ before, after }) {
  const lines = lineDiff(resourceText(before?.resources), resourceText(after?.resources));
  const changed = lines.some((line) => line.kind !== "same");
  return (
    <div data-testid="version-diff">
      {!changed ? (
        <Text size="sm" c="dimmed" mb="xs">
          The two versions are identical.
        </Text>
      ) : null}
      <Code block>
        {lines.map((line, index) => (
          <div key={index} data-kind={line.kind} style={{ background: BACKGROUND[line.kind] }}>
            {SIGN[line.kind]} {line.text}
          </div>
        ))}
      </Code>
    </div>
  );
}
