// Resources: every version of each resources set (prompts, models), and a diff between two versions.
import { useState } from "react";
import { Badge, Card, Group, Select, Stack, Table, Text, Title } from "@mantine/core";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { VersionDiff } from "../components/VersionDiff.jsx";
import { formatTime } from "../lib/format.js";
import { usePoll } from "../lib/live.js";

function describe(resource) {
  if (resource.resource_type === "prompt_template") return `prompt (${resource.engine})`;
  return `${resource.resource_type} ${resource.model || ""}`.trim();
}

export function ResourceSet({ id, versions, latest }) {
  const numbers = versions.map((v) => String(v.version));
  const [before, setBefore] = useState(numbers.length > 1 ? numbers[numbers.length - 2] : numbers[0]);
  const [after, setAfter] = useState(numbers[numbers.length - 1]);
  const find = (n) => versions.find((v) => String(v.version) === n);
  const newest = versions[versions.length - 1];
  return (
    <Card withBorder data-testid="resource-set" data-resources-id={id}>
      <Group mb="xs">
        <Title order={4} ff="monospace">
          {id}
        </Title>
        <Badge variant="light">{versions.length} versions</Badge>
        {latest && latest[0] === id ? <Badge color="green">latest: v{latest[1]}</Badge> : null}
      </Group>
      <Table fz="sm" mb="sm">
        <Table.Thead>
          <Table.Tr>
            <Table.Th>Version</Table.Th>
            <Table.Th>Written</Table.Th>
            <Table.Th>Resources</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {versions.map((v) => (
            <Table.Tr key={v.version} data-testid="resource-version">
              <Table.Td>v{v.version}</Table.Td>
              <Table.Td>{formatTime(v.update_time)}</Table.Td>
              <Table.Td>
                {Object.entries(v.resources)
                  .map(([name, resource]) => `${name}: ${describe(resource)}`)
                  .join(" · ")}
              </Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      {versions.length > 1 ? (
        <>
          <Group mb="xs">
            <Select size="xs" w={120} label="From" data={numbers} value={before} onChange={setBefore} data-testid="diff-from" />
            <Select size="xs" w={120} label="To" data={numbers} value={after} onChange={setAfter} data-testid="diff-to" />
          </Group>
          <VersionDiff before={find(before)} after={find(after)} />
        </>
      ) : (
        <VersionDiff before={newest} after={newest} />
      )}
    </Card>
  );
}

export function ResourcesPage() {
  const { data, error } = usePoll("/api/dashboard/resources");
  const groups = new Map();
  for (const version of data?.versions || []) {
    if (!groups.has(version.resources_id)) groups.set(version.resources_id, []);
    groups.get(version.resources_id).push(version);
  }
  return (
    <div>
      <Title order={3} mb="sm">
        Resources
      </Title>
      <ErrorNote error={error} />
      {data && groups.size === 0 ? <Text c="dimmed">No resources have been published.</Text> : null}
      <Stack>
        {[...groups.entries()].map(([id, versions]) => (
          <ResourceSet key={id} id={id} versions={versions.sort((a, b) => a.version - b.version)} latest={data.latest} />
        ))}
      </Stack>
    </div>
  );
}
