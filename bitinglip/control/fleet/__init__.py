"""The fleet: host health, checks, the telemetry ring and its views, agent logs."""
