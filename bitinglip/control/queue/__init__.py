"""The durable task queue: states, intake, claims and results, reads, filters, follow, jobs."""
