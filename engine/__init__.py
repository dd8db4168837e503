"""parallel-orchestrator: a durable state machine for running coding agents in parallel."""
