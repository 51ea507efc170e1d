// Inspect.
