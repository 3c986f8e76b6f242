import { Badge, Tooltip } from "@mantine/core";

const LOOK = {
  live: { color: "green", label: "live" },
  connecting: { color: "gray", label: "connecting…" },
  offline: { color: "red", label: "server unreachable" },
  unauthorized: { color: "orange", label: "token needed" },
};

// The header's small indicator: green while polls succeed, red while the server cannot be reached.
export function ConnectionIndicator({ connection }) {
  const look = LOOK[connection.state] || LOOK.connecting;
  const since = new Date(connection.since).toLocaleTimeString();
  const tip = connection.state === "live" ? `updating every few seconds (since ${since})` : `${connection.message || look.label} (since ${since}); retrying`;
  return (
    <Tooltip label={tip}>
      <Badge
        color={look.color}
        variant={connection.state === "live" ? "dot" : "filled"}
        size="lg"
        data-testid="connection"
        data-state={connection.state}
      >
        {look.label}
      </Badge>
    </Tooltip>
  );
}
