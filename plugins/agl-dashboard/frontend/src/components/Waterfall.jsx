// A trace as a waterfall: one row per span, indented under its parent, with a bar for its time.
import { Box, Group, Text, UnstyledButton } from "@mantine/core";
import { barGeometry, spanTree, traceWindow } from "../lib/trace.js";
import { formatSeconds } from "../lib/format.js";

function barColor(span) {
  if (span.status?.status_code === "ERROR" || span.name === "agl.exception") return "#fa5252";
  if (span.name === "agl.reward") return "#40c057";
  if (span.attributes?.["gen_ai.operation.name"]) return "#7950f2";
  return "#228be6";
}

export function Waterfall({ spans, selected, onSelect }) {
  const rows = spanTree(spans);
  const window = traceWindow(spans);
  if (rows.length === 0) return <Text c="dimmed">No spans recorded for this attempt.</Text>;
  return (
    <Box data-testid="waterfall">
      <Group justify="space-between" mb={4}>
        <Text size="xs" c="dimmed">
          {rows.length} spans
        </Text>
        <Text size="xs" c="dimmed">
          {formatSeconds(window.end - window.start)}
        </Text>
      </Group>
      {rows.map(({ span, depth }) => {
        const { left, width } = barGeometry(span, window);
        const isSelected = selected === span.span_id;
        const took = span.start_time != null && span.end_time != null ? span.end_time - span.start_time : null;
        return (
          <UnstyledButton
            key={`${span.attempt_id}:${span.span_id}`}
            onClick={() => onSelect?.(span.span_id)}
            data-testid="span-row"
            data-span-id={span.span_id}
            data-parent-id={span.parent_id || ""}
            data-depth={depth}
            data-name={span.name}
            style={{
              display: "flex",
              width: "100%",
              alignItems: "center",
              padding: "2px 4px",
              background: isSelected ? "var(--mantine-color-blue-light)" : undefined,
              borderBottom: "1px solid var(--mantine-color-gray-2)",
            }}
          >
            <Text size="sm" style={{ width: "35%", paddingLeft: depth * 16, whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis" }}>
              {depth > 0 ? "└ " : ""}
              {span.name}
            </Text>
            <Box style={{ position: "relative", flex: 1, height: 14 }}>
              <Box
                style={{
                  position: "absolute",
                  left: `${left}%`,
                  width: `${width}%`,
                  top: 2,
                  bottom: 2,
                  borderRadius: 3,
                  background: barColor(span),
                }}
              />
            </Box>
            <Text size="xs" c="dimmed" style={{ width: 70, textAlign: "right" }}>
              {formatSeconds(took)}
            </Text>
          </UnstyledButton>
        );
      })}
    </Box>
  );
}
