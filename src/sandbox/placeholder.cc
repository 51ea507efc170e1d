// Sandbox.
