"""The Hookpost worker: fan-out of change events, HTTP delivery, retry decisions, run loop, health and metrics."""
