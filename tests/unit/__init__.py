"""Direct unit tests of mechanisms the process-level tests only reach through real workers."""
