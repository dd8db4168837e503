"""Console entry points. Each module parses arguments and calls plain functions in engine/."""
