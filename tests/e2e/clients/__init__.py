"""Client programs run as subprocesses in a job environment: unmodified SDK usage only."""
