"""The tally: applies the vote streams exactly once to Redis and PostgreSQL, publishes updates."""
