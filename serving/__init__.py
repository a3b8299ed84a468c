"""The HTTP side of the bundle: settings, response schemas, errors, the edge and the detection pipeline."""

# The bundle's version (API docs, model info); pyproject.toml says the same (a test checks).
__version__ = "0.2.0"
