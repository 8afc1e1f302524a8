"""Stage runners: the I/O edge of each rule (read inputs, call the pure modules, write one output)."""
