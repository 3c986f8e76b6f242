// Rollouts: filters (status, mode, search) and paging run on the server; the page shows one page of them.
import { useEffect, useState } from "react";
import { Anchor, Badge, Chip, Group, Pagination, SegmentedControl, Table, Text, TextInput, Title } from "@mantine/core";
import { StatusBadge } from "../components/StatusBadge.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { queryString } from "../lib/api.js";
import { duration, formatNumber, formatSeconds, formatTime, shortJson } from "../lib/format.js";
import { usePoll } from "../lib/live.js";
import { href } from "../lib/route.js";

export const STATUSES = ["queuing", "preparing", "running", "succeeded", "failed", "cancelled", "requeuing"];
export const PAGE_SIZE = 50;

function go(params) {
  const clean = Object.fromEntries(Object.entries(params).filter(([, value]) => value !== "" && value != null));
  window.location.hash = href("rollouts", undefined, clean);
}

export function RolloutsTable({ rows, now }) {
  return (
    <Table striped highlightOnHover data-testid="rollouts-table">
      <Table.Thead>
        <Table.Tr>
          <Table.Th>Rollout</Table.Th>
          <Table.Th>Status</Table.Th>
          <Table.Th>Mode</Table.Th>
          <Table.Th>Attempts</Table.Th>
          <Table.Th>Duration</Table.Th>
          <Table.Th>Reward</Table.Th>
          <Table.Th>Worker</Table.Th>
          <Table.Th>Input</Table.Th>
          <Table.Th>Started</Table.Th>
        </Table.Tr>
      </Table.Thead>
      <Table.Tbody>
        {rows.map(({ rollout, latest_attempt: attempt, reward }) => (
          <Table.Tr key={rollout.rollout_id} data-testid="rollout-row" data-status={rollout.status}>
            <Table.Td>
              <Anchor href={href("rollouts", rollout.rollout_id)} ff="monospace" size="sm">
                {rollout.rollout_id}
              </Anchor>
              {rollout.metadata?.kind === "training-metrics" ? (
                <Badge ml={6} size="xs" variant="outline">
                  metrics
                </Badge>
              ) : null}
            </Table.Td>
            <Table.Td>
              <StatusBadge status={rollout.status} />
            </Table.Td>
            <Table.Td>{rollout.mode || "–"}</Table.Td>
            <Table.Td data-testid="attempt-count">{rollout.attempt_count}</Table.Td>
            <Table.Td>{formatSeconds(duration(rollout, now))}</Table.Td>
            <Table.Td data-testid="reward">{formatNumber(reward)}</Table.Td>
            <Table.Td>{attempt?.worker_id || "–"}</Table.Td>
            <Table.Td>
              <Text size="xs" ff="monospace" c="dimmed">
                {shortJson(rollout.input, 60)}
              </Text>
            </Table.Td>
            <Table.Td>
              <Text size="xs">{formatTime(rollout.start_time)}</Text>
            </Table.Td>
          </Table.Tr>
        ))}
      </Table.Tbody>
    </Table>
  );
}

export function RolloutsPage({ params }) {
  const statuses = params.status ? params.status.split(",") : [];
  const mode = params.mode || "";
  const page = Math.max(1, Number(params.page) || 1);
  const [search, setSearch] = useState(params.q || "");
  useEffect(() => {
    const timer = setTimeout(() => {
      if ((params.q || "") !== search) go({ ...params, q: search, page: "" });
    }, 300);
    return () => clearTimeout(timer);
  }, [search]); // eslint-disable-line react-hooks/exhaustive-deps
  const path = `/api/dashboard/rollouts${queryString({
    status: statuses,
    mode: mode || undefined,
    q: params.q,
    limit: PAGE_SIZE,
    offset: (page - 1) * PAGE_SIZE,
  })}`;
  const { data, error } = usePoll(path);
  const counts = data?.counts || {};
  const pages = data ? Math.max(1, Math.ceil(data.total / PAGE_SIZE)) : 1;
  return (
    <div>
      <Group justify="space-between" mb="sm">
        <Title order={3}>Rollouts</Title>
        <Text data-testid="rollouts-total" data-total={data?.total ?? ""}>
          {data ? `${data.total} rollouts${data.total !== data.all_rollouts ? ` of ${data.all_rollouts}` : ""}` : "loading…"}
        </Text>
      </Group>
      <Group mb="sm" align="end">
        <Chip.Group multiple value={statuses} onChange={(value) => go({ ...params, status: value.join(","), page: "" })}>
          <Group gap={6}>
            {STATUSES.map((status) => (
              <Chip key={status} value={status} size="xs" wrapperProps={{ "data-testid": `filter-${status}` }}>
                {status} {counts[status] ? `(${counts[status]})` : ""}
              </Chip>
            ))}
          </Group>
        </Chip.Group>
      </Group>
      <Group mb="md" align="end">
        <SegmentedControl
          size="xs"
          value={mode || "all"}
          onChange={(value) => go({ ...params, mode: value === "all" ? "" : value, page: "" })}
          data={["all", "train", "val", "test"]}
          data-testid="filter-mode"
        />
        <TextInput
          placeholder="search id, input, metadata"
          value={search}
          onChange={(event) => setSearch(event.currentTarget.value)}
          w={300}
          size="xs"
          data-testid="search"
        />
      </Group>
      <ErrorNote error={error} />
      {data ? <RolloutsTable rows={data.items} now={data.now} /> : null}
      {data && data.total === 0 ? (
        <Text c="dimmed" mt="md">
          No rollouts match.
        </Text>
      ) : null}
      {pages > 1 ? (
        <Pagination mt="md" total={pages} value={page} onChange={(value) => go({ ...params, page: String(value) })} data-testid="pagination" />
      ) : null}
    </div>
  );
}
