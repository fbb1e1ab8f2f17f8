"""User-side tools: the embedded broker, the demo, publishing inputs and reading results."""
