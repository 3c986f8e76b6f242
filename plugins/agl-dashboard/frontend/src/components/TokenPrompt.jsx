import { useState } from "react";
import { Alert, Button, Group, PasswordInput } from "@mantine/core";
import { setToken } from "../lib/api.js";

// Shown when the server answers 401: it has a token (agl store serve --token) and the page needs it too.
export function TokenPrompt({ message, onSaved }) {
  const [value, setValue] = useState("");
  return (
    <Alert color="orange" title="This server needs a token" data-testid="token-prompt" mb="md">
      {message}. Enter the server's token (the one it was started with, AGL_STORE_TOKEN); it is kept in this
      browser only.
      <form
        onSubmit={(event) => {
          event.preventDefault();
          setToken(value.trim());
          onSaved?.();
        }}
      >
        <Group mt="sm" align="end">
          <PasswordInput
            label="Token"
            value={value}
            onChange={(event) => setValue(event.currentTarget.value)}
            data-testid="token-input"
            w={320}
          />
          <Button type="submit" data-testid="token-save">
            Use token
          </Button>
        </Group>
      </form>
    </Alert>
  );
}
