import { AppShell, Group, MantineProvider, NavLink, Text, Title } from "@mantine/core";
import { ConnectionIndicator } from "./components/ConnectionIndicator.jsx";
import { TokenPrompt } from "./components/TokenPrompt.jsx";
import { reportConnection, useConnection } from "./lib/live.js";
import { href, useRoute } from "./lib/route.js";
import { RolloutsPage } from "./pages/Rollouts.jsx";
import { RolloutPage } from "./pages/Rollout.jsx";
import { ResourcesPage } from "./pages/Resources.jsx";
import { WorkersPage } from "./pages/Workers.jsx";
import { TrainingPage } from "./pages/Training.jsx";
import { useState } from "react";

const PAGES = [
  ["rollouts", "Rollouts"],
  ["resources", "Resources"],
  ["workers", "Workers"],
  ["training", "Training"],
];

export function App() {
  const route = useRoute();
  const connection = useConnection();
  const [tokenRound, setTokenRound] = useState(0); // a new token remounts the page, so it fetches at once
  let page;
  if (route.page === "rollouts" && route.id) page = <RolloutPage rolloutId={route.id} params={route.params} />;
  else if (route.page === "resources") page = <ResourcesPage />;
  else if (route.page === "workers") page = <WorkersPage />;
  else if (route.page === "training") page = <TrainingPage params={route.params} />;
  else page = <RolloutsPage params={route.params} />;
  return (
    <MantineProvider>
      <AppShell header={{ height: 52 }} navbar={{ width: 180, breakpoint: 0 }} padding="md">
        <AppShell.Header>
          <Group h="100%" px="md" justify="space-between">
            <Title order={4}>agl dashboard</Title>
            <ConnectionIndicator connection={connection} />
          </Group>
        </AppShell.Header>
        <AppShell.Navbar p="xs">
          {PAGES.map(([name, label]) => (
            <NavLink
              key={name}
              href={href(name)}
              label={label}
              active={route.page === name}
              data-testid={`nav-${name}`}
            />
          ))}
          <Text size="xs" c="dimmed" mt="md" px="sm">
            Updates live while a run goes on.
          </Text>
        </AppShell.Navbar>
        <AppShell.Main>
          {connection.state === "unauthorized" ? (
            <TokenPrompt
              message={connection.message}
              onSaved={() => {
                reportConnection("connecting");
                setTokenRound((n) => n + 1);
              }}
            />
          ) : null}
          <div key={tokenRound}>{page}</div>
        </AppShell.Main>
      </AppShell>
    </MantineProvider>
  );
}
