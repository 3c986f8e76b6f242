import { Badge } from "@mantine/core";

const COLORS = {
  queuing: "gray",
  requeuing: "orange",
  preparing: "cyan",
  running: "blue",
  succeeded: "green",
  failed: "red",
  cancelled: "dark",
  timeout: "grape",
  unresponsive: "yellow",
  idle: "teal",
  busy: "blue",
};

export function StatusBadge({ status }) {
  if (!status) return null;
  return (
    <Badge
      color={COLORS[status] || "gray"}
      variant="light"
      miw={92}
      styles={{ label: { overflow: "visible" } }}
      data-testid="status"
      data-status={status}
    >
      {status}
    </Badge>
  );
}
