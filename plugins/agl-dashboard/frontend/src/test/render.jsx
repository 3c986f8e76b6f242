import { render } from "@testing-library/react";
import { MantineProvider } from "@mantine/core";

function Providers({ children }) {
  return <MantineProvider>{children}</MantineProvider>;
}

// render() inside Mantine's provider (kept on rerender).
export function renderWithMantine(ui) {
  return render(ui, { wrapper: Providers });
}
