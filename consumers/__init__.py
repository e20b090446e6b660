"""Consumer loop and sinks (see the consumers issue)."""
