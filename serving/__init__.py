"""The HTTP side of the bundle: settings, response schemas, errors and the detection pipeline."""
