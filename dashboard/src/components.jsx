// Small pieces the pages share.
export function ErrorBox({ error }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {String(error.message || error)}
    </p>
  );
}

export function Notice({ text }) {
  if (!text) return null;
  return (
    <p class="notice" role="status">
      {text}
    </p>
  );
}

// Runs an async action, keeping its error for display.
export async function attempt(setError, action) {
  setError(null);
  try {
    return await action();
  } catch (error) {
    setError(error);
    return undefined;
  }
}

// A cell's value: NULL marked, objects as JSON.
export function display(value) {
  if (value === null || value === undefined) return <span class="null">NULL</span>;
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}
