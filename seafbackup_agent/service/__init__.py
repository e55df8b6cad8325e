"""The agent as a service: primary mode (serve, detect, notify) and backup mode (queue, workers, poll)."""
