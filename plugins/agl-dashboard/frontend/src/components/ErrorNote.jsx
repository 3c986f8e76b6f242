import { Alert } from "@mantine/core";
import { AuthError } from "../lib/api.js";

// A failed request that is not about the connection (the header shows that): a 404, a 400 with its message.
export function ErrorNote({ error }) {
  if (!error || error instanceof AuthError || error instanceof TypeError) return null;
  return (
    <Alert color="red" title="The server answered with an error" data-testid="error" mb="md">
      {error.message}
    </Alert>
  );
}
