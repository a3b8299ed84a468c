"""Pure functions from an upload to model input: decode and validate, resize, normalise,
test-time variants. No server, no model: everything here is tested on its own."""
