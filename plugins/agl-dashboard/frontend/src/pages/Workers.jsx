// Workers: status, how long since their last heartbeat, what they run now and the stats they report.
import { Anchor, Table, Text, Title } from "@mantine/core";
import { StatusBadge } from "../components/StatusBadge.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { formatNumber, formatSeconds } from "../lib/format.js";
import { usePoll } from "../lib/live.js";
import { href } from "../lib/route.js";

export function WorkersTable({ workers, now }) {
  return (
    <Table striped data-testid="workers-table">
      <Table.Thead>
        <Table.Tr>
          <Table.Th>Worker</Table.Th>
          <Table.Th>Status</Table.Th>
          <Table.Th>Heartbeat</Table.Th>
          <Table.Th>Current rollout</Table.Th>
          <Table.Th>System stats</Table.Th>
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {workers.map((worker) => (
          <Table.Tr key={worker.worker_id} data-testid="worker-row">
            <Table.Td ff="monospace">{worker.worker_id}</Table.Td>
            <Table.Td>
              <StatusBadge status={worker.status} />
            </Table.Td>
            <Table.Td data-testid="heartbeat-age">
              {worker.last_heartbeat_time ? `${formatSeconds(now - worker.last_heartbeat_time)} ago` : "never"}
            </Table.Td>
            <Table.Td>
              {worker.current_rollout_id ? (
                <Anchor href={href("rollouts", worker.current_rollout_id)} ff="monospace" size="sm">
                  {worker.current_rollout_id}
                </Anchor>
              ) : (
                "–"
              )}
            </Table.Td>
            <Table.Td>
              <Text size="xs">
                {Object.entries(worker.heartbeat_stats || {})
                  .map(([key, value]) => `${key} ${typeof value === "number" ? formatNumber(value, 2) : value}`)
                  .join(" · ") || "–"}
              </Text>
            </Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

export function WorkersPage() {
  const { data, error } = usePoll("/api/dashboard/workers");
  return (
    <div>
      <Title order={3} mb="sm">
        Workers
      </Title>
      <ErrorNote error={error} />
      {data && data.workers.length === 0 ? <Text c="dimmed">No worker has reported yet.</Text> : null}
      {data ? <WorkersTable workers={data.workers} now={data.now} /> : null}
    </div>
  );
}
